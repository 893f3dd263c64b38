import { useEffect, useState } from "react";
import { ago, enumName, get, num, post, when } from "../api";
import { LineChart } from "../chart";
import { ActionButton, Badge, ErrorBox, KeyValues, Loading, Section, link, usePoll } from "../ui";

export function DeploymentsPage() {
  const deps = usePoll(() => get("/v1/deployments"), 2000);
  return (
    <Section title="Deployments">
      <ErrorBox error={deps.error} />
      {!deps.data ? (
        <Loading what="deployments" />
      ) : deps.data.deployments.length === 0 ? (
        <p className="muted">Nothing deployed (aidos serve deploy MODEL).</p>
      ) : (
        deps.data.deployments.map((d: any) => <Deployment key={d.name} d={d} reload={deps.reload} />)
      )}
    </Section>
  );
}

function Deployment({ d, reload }: { d: any; reload: () => void }) {
  const [replicas, setReplicas] = useState(String(d.replicas));
  const replicasList: any[] = d.replicaStatus ?? [];
  const ready = replicasList.filter((r) => r.ready).length;
  const auto = d.autoscale && d.autoscale.maxReplicas > 0;
  return (
    <div className="card" data-testid={`deployment-${d.name}`}>
      <h3>{d.name}</h3>
      <KeyValues
        rows={[
          ["Model", <a key="m" href={link(`/models/${d.spec?.model}`)}>{`${d.spec?.model}:${d.spec?.version}`}</a>],
          ["Requested", d.requested],
          ["Runtime", `${d.spec?.runtime || "tract"}, max batch ${d.spec?.maxBatch}, ${d.spec?.instances} instance(s)`],
          ["Replicas", `${ready} ready of ${d.replicas}${auto ? ` (autoscaled ${d.autoscale.minReplicas}–${d.autoscale.maxReplicas}, target ${d.autoscale.targetInFlight} in flight)` : ""}`],
          ["Requests in flight", Number(d.inFlight ?? 0).toFixed(2)],
          ["Canary", d.canary?.spec ? `v${d.canary.spec.version} takes ${d.canary.percent}%` : "—"],
          ["Generation", d.generation],
          ["Status", d.status || "converged"],
          ["Updated", when(d.updatedAtMs)],
        ]}
      />
      <table data-testid="replicas">
        <thead>
          <tr>
            <th>Replica</th>
            <th>Version</th>
            <th>Worker</th>
            <th>State</th>
            <th>HTTP</th>
            <th>gRPC</th>
            <th>Ready since</th>
            <th>Reason</th>
          </tr>
        </thead>
        <tbody>
          {replicasList.map((r) => (
            <tr key={r.jobId}>
              <td>
                <a href={link(`/jobs/${r.jobId}`)}>{r.jobId}</a>
              </td>
              <td>v{r.version}</td>
              <td>{r.workerId}</td>
              <td>
                <Badge state={r.ready ? "ready" : enumName(r.state, "TASK_STATE_")} />
              </td>
              <td>{r.http}</td>
              <td>{r.grpc}</td>
              <td>{r.ready ? ago(r.readyAtMs) : ""}</td>
              <td className="small">{r.reason}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <LiveTraffic name={d.name} />
      {!auto && (
        <div className="filters">
          <label>
            Replicas <input type="number" min={1} value={replicas} onChange={(e) => setReplicas(e.target.value)} aria-label="replicas" />
          </label>
          <ActionButton label="Scale" action={() => post(`/v1/deployments/${encodeURIComponent(d.name)}/scale`, { replicas: Number(replicas) })} onDone={reload} />
        </div>
      )}
    </div>
  );
}

export function SweepsPage() {
  const sweeps = usePoll(() => get("/v1/sweeps"), 3000);
  return (
    <Section title="Sweeps">
      <ErrorBox error={sweeps.error} />
      {!sweeps.data ? (
        <Loading what="sweeps" />
      ) : (
        <table data-testid="sweeps">
          <thead>
            <tr>
              <th>Sweep</th>
              <th>Name</th>
              <th>State</th>
              <th>Objective</th>
              <th>Best model</th>
              <th>Created</th>
            </tr>
          </thead>
          <tbody>
            {(sweeps.data.sweeps ?? []).map((s: any) => (
              <tr key={s.id}>
                <td>
                  <a href={link(`/sweeps/${s.id}`)}>{s.id}</a>
                </td>
                <td>{s.spec?.name}</td>
                <td>
                  <Badge state={enumName(s.state, "SWEEP_STATE_")} />
                </td>
                <td>
                  {s.spec?.maximize ? "max" : "min"} {s.spec?.metric}
                </td>
                <td>{s.bestModel}</td>
                <td>{when(s.createdAtMs)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Section>
  );
}

export function SweepPage({ id }: { id: string }) {
  const sweep = usePoll(() => get(`/v1/sweeps/${encodeURIComponent(id)}`), 3000, [id]);
  const s = sweep.data;
  const trials: any[] = s?.trials ?? [];
  const params = Array.from(new Set(trials.flatMap((t) => Object.keys(parse(t.paramsJson))))).sort();
  const maximize = !!s?.spec?.maximize;
  // Best so far, in proposal order, over trials with a value.
  const bx: number[] = [];
  const by: number[] = [];
  let best: number | null = null;
  for (const t of [...trials].sort((a, b) => a.index - b.index)) {
    if (!t.hasValue) continue;
    best = best === null ? t.value : maximize ? Math.max(best, t.value) : Math.min(best, t.value);
    bx.push(t.index);
    by.push(best!);
  }
  const running = s && enumName(s.state, "SWEEP_STATE_") === "running";
  return (
    <>
      <Section
        title={`Sweep ${id}`}
        right={running ? <ActionButton label="Cancel sweep" confirm={`Cancel ${id}?`} action={() => post(`/v1/sweeps/${encodeURIComponent(id)}/cancel`)} onDone={sweep.reload} /> : null}
      >
        <ErrorBox error={sweep.error} />
        {!s ? (
          <Loading what="the sweep" />
        ) : (
          <KeyValues
            rows={[
              ["Name", s.spec?.name],
              ["State", <Badge key="s" state={enumName(s.state, "SWEEP_STATE_")} />],
              ["Objective", `${maximize ? "maximize" : "minimize"} ${s.spec?.metric}`],
              ["Searcher", enumName(s.spec?.searcher, "SEARCHER_KIND_")],
              ["Trials", `${trials.length} of ${s.spec?.maxTrials || "∞"}, ${s.spec?.maxConcurrent} at once`],
              ["Best", s.bestTrial !== undefined && s.bestTrial !== null ? `trial ${s.bestTrial}${s.bestModel ? ` → ${s.bestModel}` : ""}` : "—"],
              ["Reason", s.reason],
            ]}
          />
        )}
      </Section>
      {trials.length > 0 && (
        <>
          <Section title="Trials">
            <table data-testid="trials">
              <thead>
                <tr>
                  <th>#</th>
                  {params.map((p) => (
                    <th key={p}>{p}</th>
                  ))}
                  <th>State</th>
                  <th>Value</th>
                  <th>Rung</th>
                  <th>Job</th>
                </tr>
              </thead>
              <tbody>
                {trials.map((t) => (
                  <tr key={t.index} className={s.bestTrial === t.index ? "best" : ""}>
                    <td>{t.index}</td>
                    {params.map((p) => (
                      <td key={p}>{String(parse(t.paramsJson)[p] ?? "")}</td>
                    ))}
                    <td>
                      <Badge state={enumName(t.state, "TRIAL_STATE_")} />
                    </td>
                    <td>{t.hasValue ? Number(t.value).toPrecision(4) : ""}</td>
                    <td>{t.rung}</td>
                    <td>
                      <a href={link(`/jobs/${t.jobId}`)}>{t.jobId}</a>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </Section>
          <Section title="Search">
            <div className="charts">
              <LineChart title={`best ${s.spec?.metric} so far`} xLabel="trial" series={[{ label: "best", x: bx, y: by }]} />
              <ParallelCoordinates trials={trials} params={params} maximize={maximize} />
            </div>
          </Section>
        </>
      )}
    </>
  );
}

function parse(json: string): Record<string, unknown> {
  try {
    return JSON.parse(json || "{}");
  } catch {
    return {};
  }
}

/// One axis per parameter and one for the objective; a line per trial with a value, darker for better values.
function ParallelCoordinates({ trials, params, maximize }: { trials: any[]; params: string[]; maximize: boolean }) {
  const done = trials.filter((t) => t.hasValue);
  const axes = [...params, "objective"];
  const W = 520;
  const H = 240;
  const pad = 30;
  const x = (i: number) => pad + (i * (W - 2 * pad)) / Math.max(1, axes.length - 1);
  const value = (t: any, a: string): number | string => (a === "objective" ? t.value : (parse(t.paramsJson)[a] as number | string));
  const scales = axes.map((a) => {
    const vs = done.map((t) => value(t, a)).filter((v) => v !== undefined);
    if (vs.some((v) => typeof v !== "number")) {
      const cats = Array.from(new Set(vs.map(String))).sort();
      return (v: any) => (cats.length < 2 ? 0.5 : cats.indexOf(String(v)) / (cats.length - 1));
    }
    const ns = vs as number[];
    const lo = Math.min(...ns);
    const hi = Math.max(...ns);
    return (v: any) => (hi === lo ? 0.5 : (Number(v) - lo) / (hi - lo));
  });
  const obj = scales[axes.length - 1];
  return (
    <svg width={W} height={H} className="parcoords" data-testid="parcoords">
      <text x={W / 2} y={14} textAnchor="middle" className="title">
        parameters → objective
      </text>
      {axes.map((a, i) => (
        <g key={a}>
          <line x1={x(i)} x2={x(i)} y1={pad} y2={H - pad} stroke="#999" />
          <text x={x(i)} y={H - 8} textAnchor="middle" className="small">
            {a}
          </text>
        </g>
      ))}
      {done.map((t) => {
        const q = obj(t.value);
        const good = maximize ? q : 1 - q;
        const pts = axes.map((a, i) => `${x(i)},${H - pad - scales[i](value(t, a)) * (H - 2 * pad)}`).join(" ");
        return <polyline key={t.index} points={pts} fill="none" stroke={`rgba(37,99,235,${0.15 + 0.85 * good})`} strokeWidth={1.5} />;
      })}
    </svg>
  );
}

export function EdgePage() {
  const devices = usePoll(() => get("/v1/edge/devices"), 5000);
  const rollouts = usePoll(() => get("/v1/edge/deployments"), 5000);
  return (
    <>
      <Section title="Edge devices">
        <ErrorBox error={devices.error} />
        {!devices.data ? (
          <Loading what="devices" />
        ) : (
          <table data-testid="devices">
            <thead>
              <tr>
                <th>Device</th>
                <th>Hardware</th>
                <th>Runs</th>
                <th>Health</th>
                <th>Last seen</th>
                <th>Requests (last report)</th>
                <th>Labels</th>
              </tr>
            </thead>
            <tbody>
              {(devices.data.devices ?? []).map((d: any) => {
                const t = (d.telemetry ?? []).at(-1);
                return (
                  <tr key={d.name}>
                    <td>{d.name}</td>
                    <td>{d.hardware}</td>
                    <td>{d.status?.model ? `${d.status.model}:${d.status.version} (${d.status.runtime})` : "—"}</td>
                    <td>
                      {d.status?.health}
                      {d.status?.lastError && <div className="small error inline">{d.status.lastError}</div>}
                    </td>
                    <td>{ago(d.lastSeenMs)}</td>
                    <td>{t ? `${num(t.requests)} (${num(t.errors)} errors)` : ""}</td>
                    <td className="small">
                      {Object.entries(d.labels ?? {})
                        .map(([k, v]) => `${k}=${v}`)
                        .join(", ")}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        )}
      </Section>
      <Section title="Rollouts">
        <ErrorBox error={rollouts.error} />
        <pre className="config">{rollouts.data ? JSON.stringify(rollouts.data.deployments, null, 2) : ""}</pre>
      </Section>
    </>
  );
}

interface Sample {
  t: number;
  replicas: any[];
}

/// The quantile `q` of the requests between two cumulative histograms (`[upper bound | null, count][]`), by linear
/// interpolation inside the bucket that holds it, as Prometheus's histogram_quantile does.
export function quantile(q: number, before: [number | null, number][], after: [number | null, number][]): number | null {
  const delta = after.map(([le, n], i) => [le, n - (before[i]?.[1] ?? 0)] as [number | null, number]);
  const total = delta.at(-1)?.[1] ?? 0;
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevN = 0;
  for (const [le, n] of delta) {
    if (n >= rank) {
      if (le === null) return prevLe;
      return prevLe + ((le - prevLe) * (rank - prevN)) / Math.max(1e-12, n - prevN);
    }
    prevLe = le ?? prevLe;
    prevN = n;
  }
  return prevLe;
}

/// Request rate and latency of a deployment, from its replicas' counters read every 2 s
/// (GET /v1/deployments/{name}/metrics), over the last two minutes.
function LiveTraffic({ name }: { name: string }) {
  const [samples, setSamples] = useState<Sample[]>([]);
  const [error, setError] = useState<Error | null>(null);
  useEffect(() => {
    let stop = false;
    let timer: number | undefined;
    const poll = async () => {
      try {
        const m = await get(`/v1/deployments/${encodeURIComponent(name)}/metrics`);
        if (!stop) {
          setSamples((s) => [...s.slice(-60), { t: num(m.timeMs), replicas: m.replicas }]);
          setError(null);
        }
      } catch (e) {
        if (!stop) setError(e as Error);
      }
      if (!stop) timer = window.setTimeout(poll, 2000);
    };
    poll();
    return () => {
      stop = true;
      if (timer) clearTimeout(timer);
    };
  }, [name]);
  // Per interval: requests per second and p50/p99 latency over every replica seen in both samples.
  const rate: number[] = [];
  const p50: number[] = [];
  const p99: number[] = [];
  const xs: number[] = [];
  for (let i = 1; i < samples.length; i++) {
    const [a, b] = [samples[i - 1], samples[i]];
    const dt = (b.t - a.t) / 1000;
    let n = 0;
    const hb: [number | null, number][] = [];
    const ha: [number | null, number][] = [];
    for (const r of b.replicas) {
      const prev = a.replicas.find((x: any) => x.jobId === r.jobId);
      if (!prev || r.error || prev.error) continue;
      n += r.success + r.failure + r.rejected - (prev.success + prev.failure + prev.rejected);
      r.buckets.forEach(([le, c]: [number | null, number], j: number) => {
        ha[j] = [le, (ha[j]?.[1] ?? 0) + c];
        hb[j] = [le, (hb[j]?.[1] ?? 0) + (prev.buckets[j]?.[1] ?? 0)];
      });
    }
    xs.push(Math.round((b.t - samples[0].t) / 1000));
    rate.push(dt > 0 ? Math.max(0, n) / dt : 0);
    p50.push((quantile(0.5, hb, ha) ?? 0) * 1000);
    p99.push((quantile(0.99, hb, ha) ?? 0) * 1000);
  }
  const last = rate.length - 1;
  const failing = (samples.at(-1)?.replicas ?? []).filter((r: any) => r.error);
  return (
    <div data-testid={`traffic-${name}`}>
      <ErrorBox error={error} />
      {failing.map((r: any) => (
        <div key={r.jobId} className="small error inline">
          {r.jobId}: {r.error}
        </div>
      ))}
      <p>
        <b>Live:</b> {last >= 0 ? `${rate[last].toFixed(1)} req/s, p50 ${p50[last].toFixed(2)} ms, p99 ${p99[last].toFixed(2)} ms` : "measuring…"}
      </p>
      {xs.length > 1 && (
        <div className="charts">
          <LineChart title="requests per second" xLabel="seconds" series={[{ label: "req/s", x: xs, y: rate }]} width={420} height={180} />
          <LineChart
            title="latency (ms)"
            xLabel="seconds"
            series={[
              { label: "p50", x: xs, y: p50 },
              { label: "p99", x: xs, y: p99 },
            ]}
            width={420}
            height={180}
          />
        </div>
      )}
    </div>
  );
}

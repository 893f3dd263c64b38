import { useMemo, useState } from "react";
import { get, num, qs, when } from "../api";
import { LineChart, type Series } from "../chart";
import { ErrorBox, KeyValues, Loading, Section, link, usePoll } from "../ui";

/// Points per series the server sends (it downsamples: GET /v1/runs?max_points=N).
const CHART_POINTS = 400;

/// The latest value of every metric of a run.
function latest(run: any): Record<string, number> {
  const out: Record<string, number> = {};
  for (const p of run.metrics ?? []) out[p.name] = p.value;
  return out;
}

/// Series by metric name: [step, value] in step order.
function seriesOf(run: any): Map<string, { x: number[]; y: number[] }> {
  const m = new Map<string, { x: number[]; y: number[] }>();
  for (const p of run.metrics ?? []) {
    if (!m.has(p.name)) m.set(p.name, { x: [], y: [] });
    const s = m.get(p.name)!;
    s.x.push(num(p.step));
    s.y.push(p.value);
  }
  return m;
}

export function RunsPage() {
  const runs = usePoll(() => get(`/v1/runs${qs({ max_points: 2 })}`), 5000);
  const experiments = usePoll(() => get("/v1/experiments"), 10000);
  const [experiment, setExperiment] = useState("");
  const [picked, setPicked] = useState<string[]>([]);
  const list = useMemo(
    () =>
      [...(runs.data?.runs ?? [])]
        .filter((r: any) => !experiment || r.experimentId === experiment)
        .sort((a: any, b: any) => num(b.createdAtMs) - num(a.createdAtMs)),
    [runs.data, experiment],
  );
  const names = useMemo(() => Array.from(new Set(list.flatMap((r: any) => Object.keys(latest(r))))).sort(), [list]);
  return (
    <Section
      title="Runs"
      right={
        <a className={`button ${picked.length < 2 ? "disabled" : ""}`} href={picked.length >= 2 ? link(`/compare/${picked.join(",")}`) : undefined}>
          Compare {picked.length || ""}
        </a>
      }
    >
      <div className="filters">
        <label>
          Experiment{" "}
          <select value={experiment} onChange={(e) => setExperiment(e.target.value)} aria-label="experiment">
            <option value="">any</option>
            {(experiments.data?.experiments ?? []).map((x: any) => (
              <option key={x.id} value={x.id}>
                {x.name} ({x.id})
              </option>
            ))}
          </select>
        </label>
      </div>
      <ErrorBox error={runs.error} />
      {!runs.data ? (
        <Loading what="runs" />
      ) : (
        <table data-testid="runs">
          <thead>
            <tr>
              <th />
              <th>Run</th>
              <th>Experiment</th>
              <th>Status</th>
              <th>Dataset</th>
              <th>Model</th>
              <th>Started</th>
              {names.map((n) => (
                <th key={n}>{n}</th>
              ))}
            </tr>
          </thead>
          <tbody>
            {list.map((r: any) => {
              const l = latest(r);
              return (
                <tr key={r.id}>
                  <td>
                    <input
                      type="checkbox"
                      aria-label={`compare ${r.id}`}
                      checked={picked.includes(r.id)}
                      onChange={(e) => setPicked(e.target.checked ? [...picked, r.id] : picked.filter((x) => x !== r.id))}
                    />
                  </td>
                  <td>
                    <a href={link(`/runs/${r.id}`)}>{r.id}</a>
                  </td>
                  <td>{r.experimentId}</td>
                  <td>{r.status.toLowerCase()}</td>
                  <td>{r.dataset}</td>
                  <td>{r.model}</td>
                  <td>{when(r.createdAtMs)}</td>
                  {names.map((n) => (
                    <td key={n}>{l[n] === undefined ? "" : fmt(l[n])}</td>
                  ))}
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </Section>
  );
}

function fmt(v: number): string {
  return Math.abs(v) >= 1000 || Number.isInteger(v) ? v.toFixed(0) : v.toPrecision(4);
}

/// One run: its parameters and a chart per metric, refreshed while it trains.
export function RunPage({ id }: { id: string }) {
  const run = usePoll(() => get(`/v1/runs/${encodeURIComponent(id)}${qs({ max_points: CHART_POINTS })}`), 2000, [id]);
  const r = run.data;
  const series = useMemo(() => (r ? seriesOf(r) : new Map()), [r]);
  return (
    <>
      <Section title={`Run ${id}`}>
        <ErrorBox error={run.error} />
        {!r ? (
          <Loading what="the run" />
        ) : (
          <KeyValues
            rows={[
              ["Job", r.jobId ? <a key="j" href={link(`/jobs/${r.jobId}`)}>{r.jobId}</a> : "— (logged through the MLflow API)"],
              ["Name", r.name || r.id],
              ["Experiment", r.experimentId],
              ["Status", r.status],
              ["Attempt", r.attempt],
              ["Dataset", r.dataset],
              ["Model", r.model ? <a key="m" href={link(`/models/${r.model.split(":")[0]}`)}>{r.model}</a> : "—"],
              ["Resumed from step", r.resumedFromStep],
              ["Checkpoints", (r.checkpoints ?? []).length],
              ...Object.entries(r.params ?? {}).map(([k, v]) => [`param ${k}`, String(v)] as [string, string]),
              ...Object.entries(r.tags ?? {}).map(([k, v]) => [`tag ${k}`, String(v)] as [string, string]),
              ...Object.keys(r.artifacts ?? {}).map((p) => [`file ${p}`, (r.artifacts[p] as string).slice(0, 12)] as [string, string]),
            ]}
          />
        )}
      </Section>
      {r && (
        <Section title="Metrics">
          <div className="charts">
            {[...series.entries()].map(([name, s]) => (
              <LineChart key={name} title={name} series={[{ label: name, ...s }]} />
            ))}
            {series.size === 0 && <p className="muted">No metrics reported yet.</p>}
          </div>
        </Section>
      )}
    </>
  );
}

/// Runs side by side: overlaid curves per metric and a table of params and final metrics.
export function ComparePage({ ids }: { ids: string[] }) {
  const runs = usePoll(() => Promise.all(ids.map((id) => get(`/v1/runs/${encodeURIComponent(id)}${qs({ max_points: CHART_POINTS })}`))), 5000, [ids.join(",")]);
  const rs: any[] = runs.data ?? [];
  const names = Array.from(new Set(rs.flatMap((r) => [...seriesOf(r).keys()]))).sort();
  const params = Array.from(new Set(rs.flatMap((r) => Object.keys(r.params ?? {})))).sort();
  return (
    <>
      <Section title={`Compare ${ids.join(", ")}`}>
        <ErrorBox error={runs.error} />
        {!runs.data ? (
          <Loading what="runs" />
        ) : (
          <table data-testid="compare">
            <thead>
              <tr>
                <th />
                {rs.map((r) => (
                  <th key={r.id}>{r.id}</th>
                ))}
              </tr>
            </thead>
            <tbody>
              {params.map((p) => (
                <tr key={p}>
                  <th>{p}</th>
                  {rs.map((r) => (
                    <td key={r.id}>{r.params?.[p]}</td>
                  ))}
                </tr>
              ))}
              {names.map((n) => (
                <tr key={n}>
                  <th>{n} (last)</th>
                  {rs.map((r) => (
                    <td key={r.id}>{latest(r)[n] === undefined ? "" : fmt(latest(r)[n])}</td>
                  ))}
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Section>
      {rs.length > 0 && (
        <Section title="Curves">
          <div className="charts">
            {names.map((n) => {
              const series: Series[] = rs.filter((r) => seriesOf(r).has(n)).map((r) => ({ label: r.id, ...seriesOf(r).get(n)! }));
              return <LineChart key={n} title={n} series={series} />;
            })}
          </div>
        </Section>
      )}
    </>
  );
}

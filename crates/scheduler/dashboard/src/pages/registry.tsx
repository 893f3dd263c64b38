import { useEffect, useMemo, useState } from "react";
import { bytes, get, num, post, when } from "../api";
import { ActionButton, ErrorBox, KeyValues, Loading, Section, link, usePoll } from "../ui";

/// Models by name, newest version first.
function byName(models: any[]): Map<string, any[]> {
  const m = new Map<string, any[]>();
  for (const v of models) {
    if (!m.has(v.name)) m.set(v.name, []);
    m.get(v.name)!.push(v);
  }
  for (const vs of m.values()) vs.sort((a, b) => b.version - a.version);
  return m;
}

function metricsText(metrics: Record<string, number> | undefined): string {
  return Object.entries(metrics ?? {})
    .map(([k, v]) => `${k} ${Number(v).toPrecision(4)}`)
    .join(", ");
}

export function RegistryPage() {
  const models = usePoll(() => get("/v1/models"), 5000);
  const datasets = usePoll(() => get("/v1/datasets"), 5000);
  const names = useMemo(() => byName(models.data?.models ?? []), [models.data]);
  return (
    <>
      <Section title="Models">
        <ErrorBox error={models.error} />
        {!models.data ? (
          <Loading what="models" />
        ) : (
          <table data-testid="models">
            <thead>
              <tr>
                <th>Model</th>
                <th>Versions</th>
                <th>Latest</th>
                <th>Aliases</th>
                <th>Metrics (latest)</th>
              </tr>
            </thead>
            <tbody>
              {[...names.entries()].map(([name, vs]) => (
                <tr key={name}>
                  <td>
                    <a href={link(`/models/${name}`)}>{name}</a>
                  </td>
                  <td>{vs.length}</td>
                  <td>v{vs[0].version}</td>
                  <td>{vs.flatMap((v) => (v.aliases ?? []).map((a: string) => `${a} → v${v.version}`)).join(", ")}</td>
                  <td className="small">{metricsText(vs[0].metrics)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Section>
      <Section title="Datasets">
        <ErrorBox error={datasets.error} />
        {!datasets.data ? (
          <Loading what="datasets" />
        ) : (
          <table data-testid="datasets">
            <thead>
              <tr>
                <th>Dataset</th>
                <th>Version</th>
                <th>Rows</th>
                <th>Row shape</th>
                <th>Classes</th>
                <th>Splits</th>
                <th>Created</th>
              </tr>
            </thead>
            <tbody>
              {(datasets.data.datasets ?? []).map((d: any) => (
                <tr key={`${d.name}@${d.version}`}>
                  <td>
                    <a href={link(`/datasets/${d.name}/${d.version}`)}>{d.name}</a>
                  </td>
                  <td>v{d.version}</td>
                  <td>{num(d.rows).toLocaleString()}</td>
                  <td>[{(d.rowShape ?? []).join(", ")}]</td>
                  <td>{d.numClasses}</td>
                  <td>{(d.splits ?? []).map((s: any) => `${s.name} ${num(s.end) - num(s.start)}`).join(", ")}</td>
                  <td>{when(d.createdAtMs)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Section>
    </>
  );
}

export function ModelPage({ name }: { name: string }) {
  const models = usePoll(() => get("/v1/models"), 5000, [name]);
  const versions = (byName(models.data?.models ?? []).get(name) ?? []) as any[];
  const [alias, setAlias] = useState("production");
  const [version, setVersion] = useState("");
  // The latest version once the list arrives (a choice the user made stays).
  useEffect(() => {
    if (!version && versions[0]) setVersion(String(versions[0].version));
  }, [version, versions]);
  return (
    <>
      <Section title={`Model ${name}`}>
        <ErrorBox error={models.error} />
        {!models.data ? (
          <Loading what="the model" />
        ) : versions.length === 0 ? (
          <p>No such model.</p>
        ) : (
          <table data-testid="versions">
            <thead>
              <tr>
                <th>Version</th>
                <th>Aliases</th>
                <th>Metrics</th>
                <th>Dataset</th>
                <th>Run</th>
                <th>Job</th>
                <th>Sweep</th>
                <th>Artifacts</th>
                <th>Registered</th>
              </tr>
            </thead>
            <tbody>
              {versions.map((v) => (
                <tr key={v.version}>
                  <td>v{v.version}</td>
                  <td>{(v.aliases ?? []).join(", ")}</td>
                  <td className="small">{metricsText(v.metrics)}</td>
                  <td>{v.lineage?.dataset && <a href={link(`/datasets/${v.lineage.dataset.replace("@v", "/")}`)}>{v.lineage.dataset}</a>}</td>
                  <td>{v.lineage?.runId && <a href={link(`/runs/${v.lineage.runId}`)}>{v.lineage.runId}</a>}</td>
                  <td>{v.lineage?.jobId && <a href={link(`/jobs/${v.lineage.jobId}`)}>{v.lineage.jobId}</a>}</td>
                  <td>{v.lineage?.sweep && <a href={link(`/sweeps/${v.lineage.sweep}`)}>{v.lineage.sweep}</a>}</td>
                  <td className="small">{Object.keys(v.artifacts ?? {}).join(", ")}</td>
                  <td>{when(v.createdAtMs)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Section>
      {versions.length > 0 && (
        <Section title="Set an alias">
          <div className="filters">
            <label>
              Alias <input value={alias} onChange={(e) => setAlias(e.target.value)} aria-label="alias" />
            </label>
            <label>
              Version{" "}
              <select value={version} onChange={(e) => setVersion(e.target.value)} aria-label="version">
                {versions.map((v) => (
                  <option key={v.version} value={v.version}>
                    v{v.version}
                  </option>
                ))}
              </select>
            </label>
            <ActionButton
              label="Set alias"
              action={async () => {
                if (!version) throw new Error("choose a version");
                await post(`/v1/models/${encodeURIComponent(name)}/aliases`, { alias, version: Number(version) });
              }}
              onDone={models.reload}
            />
          </div>
        </Section>
      )}
      {versions.length > 0 && <Evaluation name={name} versions={versions} />}
      {versions[0]?.config && (
        <Section title={`Configuration of v${versions[0].version}`}>
          <pre className="config">{pretty(versions[0].config)}</pre>
        </Section>
      )}
    </>
  );
}

function pretty(json: string): string {
  try {
    return JSON.stringify(JSON.parse(json), null, 2);
  } catch {
    return json;
  }
}

export function DatasetPage({ name, version }: { name: string; version: string }) {
  const ds = usePoll(() => get(`/v1/datasets/${encodeURIComponent(name)}?version=${version}`), 0, [name, version]);
  const d = ds.data;
  const hist: [number, number][] = Object.entries(d?.stats?.labelHistogram ?? {}).map(([k, v]) => [Number(k), num(v as string)]);
  hist.sort((a, b) => a[0] - b[0]);
  const max = Math.max(1, ...hist.map((h) => h[1]));
  const features = d?.stats?.features ?? [];
  return (
    <>
      <Section title={`Dataset ${name}@v${version}`}>
        <ErrorBox error={ds.error} />
        {!d ? (
          <Loading what="the dataset" />
        ) : (
          <KeyValues
            rows={[
              ["Rows", num(d.rows).toLocaleString()],
              ["Row shape", `[${(d.rowShape ?? []).join(", ")}] ${d.dtype}`],
              ["Classes", d.numClasses],
              ["Splits", (d.splits ?? []).map((s: any) => `${s.name}: rows ${s.start}–${s.end}`).join("; ")],
              ["Source", `${d.source} (${d.format})`],
              ["Size", bytes((d.featureChunks ?? []).reduce((a: number, c: any) => a + num(c.bytes), 0))],
              ["Duplicate rows", d.stats?.duplicateRows],
              ["Missing values", d.stats?.missingValues],
              ["Content hash", <code key="h">{d.contentHash}</code>],
              ["Created", when(d.createdAtMs)],
            ]}
          />
        )}
      </Section>
      {hist.length > 0 && (
        <Section title="Label histogram">
          <div className="histogram" data-testid="histogram">
            {hist.map(([label, n]) => (
              <div key={label} className="bar" title={`label ${label}: ${n}`}>
                <div className="fill" style={{ height: `${(100 * n) / max}%` }} />
                <span>{label}</span>
              </div>
            ))}
          </div>
        </Section>
      )}
      {features.length > 0 && features.length <= 64 && (
        <Section title="Features">
          <table>
            <thead>
              <tr>
                <th>Column</th>
                <th>Min</th>
                <th>Max</th>
                <th>Mean</th>
              </tr>
            </thead>
            <tbody>
              {features.map((f: any, i: number) => (
                <tr key={i}>
                  <td>{i}</td>
                  <td>{f.min}</td>
                  <td>{f.max}</td>
                  <td>{Number(f.mean).toPrecision(4)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </Section>
      )}
      {features.length > 64 && <p className="muted">{features.length} feature columns (statistics per column via the API).</p>}
    </>
  );
}


/// A version's evaluation as its training job recorded it: accuracy, per-class precision and recall, and the
/// confusion matrix (rows: true class, columns: predicted), shaded by share of the row.
function Evaluation({ name, versions }: { name: string; versions: any[] }) {
  const withEval = versions.filter((v) => v.artifacts?.evaluation);
  const [version, setVersion] = useState<number>(withEval[0]?.version ?? 0);
  const ev = usePoll(
    () => (version ? get(`/v1/models/${encodeURIComponent(name)}/evaluation?version=${version}`) : Promise.resolve(null)),
    0,
    [name, version],
  );
  if (withEval.length === 0) return null;
  const e = ev.data;
  const confusion: number[][] = e?.confusion ?? [];
  return (
    <Section
      title="Evaluation"
      right={
        <select value={version} onChange={(x) => setVersion(Number(x.target.value))} aria-label="evaluated version">
          {withEval.map((v) => (
            <option key={v.version} value={v.version}>
              v{v.version}
            </option>
          ))}
        </select>
      }
    >
      <ErrorBox error={ev.error} />
      {e && (
        <>
          <p>
            {e.dataset} split <b>{e.split}</b>: accuracy <b data-testid="eval-accuracy">{(100 * e.accuracy).toFixed(2)}%</b>, loss {Number(e.loss).toFixed(4)}
          </p>
          <table className="confusion" data-testid="confusion">
            <thead>
              <tr>
                <th>true \ predicted</th>
                {confusion.map((_, j) => (
                  <th key={j}>{j}</th>
                ))}
                <th>recall</th>
              </tr>
            </thead>
            <tbody>
              {confusion.map((row, i) => {
                const total = row.reduce((a, b) => a + b, 0) || 1;
                return (
                  <tr key={i}>
                    <th>{i}</th>
                    {row.map((n, j) => (
                      <td key={j} style={{ background: `rgba(${i === j ? "22,163,74" : "220,38,38"},${Math.min(1, (n / total) * (i === j ? 1 : 4))})` }}>
                        {n}
                      </td>
                    ))}
                    <td>{Number(e.perClass?.[i]?.recall ?? 0).toFixed(3)}</td>
                  </tr>
                );
              })}
              <tr>
                <th>precision</th>
                {(e.perClass ?? []).map((c: any, j: number) => (
                  <td key={j}>{Number(c.precision).toFixed(3)}</td>
                ))}
                <td />
              </tr>
            </tbody>
          </table>
        </>
      )}
    </Section>
  );
}

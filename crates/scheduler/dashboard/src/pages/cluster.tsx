import { ago, bytes, cores, enumName, get, num } from "../api";
import { Badge, ErrorBox, KeyValues, Loading, Section, usePoll } from "../ui";

export function ClusterPage() {
  const status = usePoll(() => get("/v1/cluster"), 2000);
  const workers = usePoll(() => get("/v1/workers"), 2000);
  const s = status.data;
  return (
    <>
      <Section title="Control plane">
        <ErrorBox error={status.error} />
        {!s ? (
          <Loading what="the cluster" />
        ) : (
          <>
            <KeyValues
              rows={[
                ["Leader", s.leaderId !== "0" ? `node ${s.leaderId} (${s.leaderAddr})` : "none elected"],
                ["Term", s.term],
                ["Answered by", `node ${s.nodeId} (${s.state})`],
                ["Applied log index", `${s.lastApplied} of ${s.lastLogIndex}`],
                ["Jobs", `${s.jobsActive} active, ${s.jobsTotal} in all`],
                ["Workers", `${s.workersReady} ready, ${s.workersLost} lost`],
              ]}
            />
            <table>
              <thead>
                <tr>
                  <th>Node</th>
                  <th>Address</th>
                  <th>Role</th>
                </tr>
              </thead>
              <tbody>
                {(s.members ?? []).map((m: any) => (
                  <tr key={m.id}>
                    <td>{m.id}</td>
                    <td>{m.addr}</td>
                    <td>{m.id === s.leaderId ? "leader" : m.voter ? "voter" : "learner"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </>
        )}
      </Section>
      <Section title="Workers">
        <ErrorBox error={workers.error} />
        {!workers.data ? (
          <Loading what="workers" />
        ) : (
          <table data-testid="workers">
            <thead>
              <tr>
                <th>Worker</th>
                <th>Host</th>
                <th>State</th>
                <th>CPU (alloc / cap)</th>
                <th>Memory (alloc / cap)</th>
                <th>GPUs</th>
                <th>Labels</th>
                <th>Since</th>
              </tr>
            </thead>
            <tbody>
              {workers.data.workers.map((w: any) => (
                <tr key={w.id}>
                  <td>{w.id}</td>
                  <td>{w.hostname}</td>
                  <td>
                    <Badge state={enumName(w.state, "WORKER_STATE_")} />
                  </td>
                  <td>
                    <Meter used={num(w.allocated?.cpuMillis)} cap={num(w.capacity?.cpuMillis)} />
                    {cores(w.allocated?.cpuMillis)} / {cores(w.capacity?.cpuMillis)}
                  </td>
                  <td>
                    <Meter used={num(w.allocated?.memoryBytes)} cap={num(w.capacity?.memoryBytes)} />
                    {bytes(w.allocated?.memoryBytes)} / {bytes(w.capacity?.memoryBytes)}
                  </td>
                  <td>
                    {w.allocated?.gpus ?? 0} / {w.capacity?.gpus ?? 0}
                    {w.gpuNames?.length ? <div className="muted small">{w.gpuNames.join(", ")}</div> : null}
                  </td>
                  <td className="small">
                    {Object.entries(w.labels ?? {})
                      .map(([k, v]) => `${k}=${v}`)
                      .join(", ")}
                  </td>
                  <td>{ago(w.stateChangedAtMs)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Section>
    </>
  );
}

function Meter({ used, cap }: { used: number; cap: number }) {
  const pct = cap > 0 ? Math.min(100, (100 * used) / cap) : 0;
  return (
    <div className="meter" title={`${pct.toFixed(0)}%`}>
      <div style={{ width: `${pct}%` }} />
    </div>
  );
}

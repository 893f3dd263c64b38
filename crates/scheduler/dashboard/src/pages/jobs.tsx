import { useEffect, useRef, useState } from "react";
import { duration, enumName, get, num, post, qs, when } from "../api";
import { ActionButton, Badge, ErrorBox, KeyValues, Loading, Section, link, usePoll } from "../ui";

const STATES = ["", "pending", "running", "succeeded", "failed", "cancelled"];
const KINDS = ["", "train", "serve", "export", "process"];

/// The jobs list: filtered and paginated on the server (GET /v1/jobs), newest first.
export function JobsPage() {
  const [state, setState] = useState("");
  const [kind, setKind] = useState("");
  const [name, setName] = useState("");
  const [label, setLabel] = useState("");
  // Tokens of the pages before this one (the first page has "").
  const [pages, setPages] = useState<string[]>([""]);
  const page = pages[pages.length - 1];
  const filters = { state, kind, name, label: label.includes("=") ? label : undefined };
  const jobs = usePoll(() => get(`/v1/jobs${qs({ ...filters, limit: 50, page_token: page })}`), 3000, [state, kind, name, label, page]);
  const reset = () => setPages([""]);
  const d = jobs.data;
  return (
    <Section title="Jobs" right={d && <span className="muted">{num(d.total)} matching</span>}>
      <div className="filters">
        <Choice label="State" value={state} options={STATES} onChange={(v) => (setState(v), reset())} />
        <Choice label="Kind" value={kind} options={KINDS} onChange={(v) => (setKind(v), reset())} />
        <label>
          Name <input value={name} placeholder="prefix" onChange={(e) => (setName(e.target.value), reset())} aria-label="name" />
        </label>
        <label>
          Label <input value={label} placeholder="key=value" onChange={(e) => (setLabel(e.target.value), reset())} aria-label="label" />
        </label>
      </div>
      <ErrorBox error={jobs.error} />
      {!d ? (
        <Loading what="jobs" />
      ) : (
        <>
          <table data-testid="jobs">
            <thead>
              <tr>
                <th>Job</th>
                <th>Name</th>
                <th>Kind</th>
                <th>State</th>
                <th>Ranks</th>
                <th>Attempt</th>
                <th>Created</th>
                <th>Reason</th>
              </tr>
            </thead>
            <tbody>
              {d.jobs.map((j: any) => (
                <tr key={j.id}>
                  <td>
                    <a href={link(`/jobs/${j.id}`)}>{j.id}</a>
                  </td>
                  <td>{j.spec?.name}</td>
                  <td>{enumName(j.spec?.kind, "JOB_KIND_")}</td>
                  <td>
                    <Badge state={enumName(j.state, "JOB_STATE_")} />
                  </td>
                  <td>{j.tasks?.length ?? 0}</td>
                  <td>{j.attempt}</td>
                  <td>{when(j.createdAtMs)}</td>
                  <td className="small">{j.reason}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <div className="pager">
            <button disabled={pages.length < 2} onClick={() => setPages(pages.slice(0, -1))}>
              ← Newer
            </button>
            <span className="muted">page {pages.length}</span>
            <button disabled={!d.nextPageToken} onClick={() => setPages([...pages, d.nextPageToken])}>
              Older →
            </button>
          </div>
        </>
      )}
    </Section>
  );
}

/// A labelled drop-down of `options` ("" reads "any"); `aria-label` is the label in lower case.
function Choice({ label, value, options, onChange }: { label: string; value: string; options: string[]; onChange: (v: string) => void }) {
  return (
    <label>
      {label}{" "}
      <select value={value} onChange={(e) => onChange(e.target.value)} aria-label={label.toLowerCase()}>
        {options.map((s) => (
          <option key={s} value={s}>
            {s || "any"}
          </option>
        ))}
      </select>
    </label>
  );
}

export function JobPage({ id }: { id: string }) {
  const job = usePoll(() => get(`/v1/jobs/${encodeURIComponent(id)}`), 2000, [id]);
  const j = job.data;
  const state = j ? enumName(j.state, "JOB_STATE_") : "";
  const ended = ["succeeded", "failed", "cancelled"].includes(state);
  return (
    <>
      <Section
        title={`Job ${id}`}
        right={
          j && !ended ? (
            <ActionButton label="Cancel job" confirm={`Cancel ${id}?`} action={() => post(`/v1/jobs/${encodeURIComponent(id)}/cancel`)} onDone={job.reload} />
          ) : null
        }
      >
        <ErrorBox error={job.error} />
        {!j ? (
          <Loading what="the job" />
        ) : (
          <KeyValues
            rows={[
              ["Name", j.spec?.name],
              ["Kind", enumName(j.spec?.kind, "JOB_KIND_")],
              ["State", <Badge key="s" state={state} />],
              ["Reason", j.reason],
              ["Project", j.spec?.project || "default"],
              ["Created", when(j.createdAtMs)],
              ["Attempt", `${j.attempt} (max retries ${j.spec?.maxRetries ?? 0})`],
              ["Labels", Object.entries(j.spec?.labels ?? {}).map(([k, v]) => `${k}=${v}`).join(", ")],
              ["Run", j.spec?.train ? <a href={link(`/runs/${id}.${j.attempt}`)}>{`${id}.${j.attempt}`}</a> : "—"],
            ]}
          />
        )}
      </Section>
      {j && (
        <Section title="Tasks and attempts">
          <table data-testid="attempts">
            <thead>
              <tr>
                <th>Rank</th>
                <th>Attempt</th>
                <th>Worker</th>
                <th>State</th>
                <th>Exit code</th>
                <th>Ran for</th>
                <th>Message</th>
              </tr>
            </thead>
            <tbody>
              {(j.tasks ?? []).flatMap((t: any) =>
                (t.attempts ?? []).map((a: any) => (
                  <tr key={`${t.rank}.${a.attempt}`}>
                    <td>{t.rank}</td>
                    <td>{a.attempt}</td>
                    <td>{a.workerId}</td>
                    <td>
                      <Badge state={enumName(a.state, "TASK_STATE_")} />
                    </td>
                    <td>{enumName(a.state, "TASK_STATE_") === "running" ? "" : a.exitCode}</td>
                    <td>{duration(a.startedAtMs, a.finishedAtMs)}</td>
                    <td className="small">{a.message}</td>
                  </tr>
                )),
              )}
            </tbody>
          </table>
        </Section>
      )}
      {j && <Logs id={id} ranks={j.tasks?.length ?? 1} />}
    </>
  );
}

/// The job's output, tailed by byte offset (GET /v1/jobs/{id}/logs?rank=R&offset=N) until the job has ended and
/// everything was read.
function Logs({ id, ranks }: { id: string; ranks: number }) {
  const [rank, setRank] = useState(0);
  const [text, setText] = useState("");
  const [error, setError] = useState<Error | null>(null);
  const [complete, setComplete] = useState(false);
  const pre = useRef<HTMLPreElement>(null);
  useEffect(() => {
    let stop = false;
    let offset = 0;
    let timer: number | undefined;
    setText("");
    setComplete(false);
    const poll = async () => {
      try {
        const p = await get(`/v1/jobs/${encodeURIComponent(id)}/logs${qs({ rank, offset })}`);
        if (stop) return;
        setError(null);
        if (p.data) {
          setText((t) => (t + p.data).slice(-2_000_000));
          const el = pre.current;
          if (el && el.scrollHeight - el.scrollTop - el.clientHeight < 40) requestAnimationFrame(() => (el.scrollTop = el.scrollHeight));
        }
        offset = p.nextOffset;
        if (p.complete) {
          setComplete(true);
          return;
        }
      } catch (e) {
        if (!stop) setError(e as Error);
      }
      if (!stop) timer = window.setTimeout(poll, 1000);
    };
    poll();
    return () => {
      stop = true;
      if (timer) clearTimeout(timer);
    };
  }, [id, rank]);
  return (
    <Section
      title="Logs"
      right={
        <span>
          {ranks > 1 && (
            <select value={rank} onChange={(e) => setRank(Number(e.target.value))} aria-label="rank">
              {Array.from({ length: ranks }, (_, r) => (
                <option key={r} value={r}>
                  rank {r}
                </option>
              ))}
            </select>
          )}{" "}
          <span className="muted">{complete ? "complete" : "following…"}</span>
        </span>
      }
    >
      <ErrorBox error={error} />
      <pre className="logs" data-testid="logs" ref={pre}>
        {text || (complete ? "(no output)" : "")}
      </pre>
    </Section>
  );
}

import { useCallback, useEffect, useRef, useState, type ReactNode } from "react";
import { ApiError } from "./api";

/// Loads `load()` now and every `everyMs` (0: once) while the page shows; `deps` reload it at once.
export function usePoll<T>(load: () => Promise<T>, everyMs: number, deps: unknown[] = []) {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<ApiError | Error | null>(null);
  const loadRef = useRef(load);
  loadRef.current = load;
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  useEffect(() => {
    let stop = false;
    let timer: number | undefined;
    const run = async () => {
      try {
        const d = await loadRef.current();
        if (!stop) {
          setData(d);
          setError(null);
        }
      } catch (e) {
        if (!stop) setError(e as Error);
      }
      if (!stop && everyMs > 0) timer = window.setTimeout(run, everyMs);
    };
    run();
    return () => {
      stop = true;
      if (timer) clearTimeout(timer);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [everyMs, tick, ...deps]);
  return { data, error, reload };
}

export function ErrorBox({ error }: { error: Error | null }) {
  if (!error) return null;
  const auth = error instanceof ApiError && (error.status === 401 || error.status === 403);
  return (
    <div className="error" role="alert">
      {error.message}
      {auth && <div>Set a token with access to this project above (`aidos token create`, or the admin token).</div>}
    </div>
  );
}

export function Loading({ what }: { what: string }) {
  return <p className="muted">Loading {what}…</p>;
}

const STATE_CLASS: Record<string, string> = {
  running: "run",
  ready: "ok",
  succeeded: "ok",
  completed: "ok",
  serving: "ok",
  pending: "wait",
  assigned: "wait",
  starting: "wait",
  failed: "bad",
  lost: "bad",
  cancelled: "muted",
  pruned: "muted",
};

export function Badge({ state }: { state: string }) {
  return <span className={`badge ${STATE_CLASS[state] ?? ""}`}>{state}</span>;
}

export function Section({ title, children, right }: { title: string; children: ReactNode; right?: ReactNode }) {
  return (
    <section>
      <div className="section-head">
        <h2>{title}</h2>
        {right}
      </div>
      {children}
    </section>
  );
}

export function KeyValues({ rows }: { rows: [string, ReactNode][] }) {
  return (
    <table className="kv">
      <tbody>
        {rows.map(([k, v]) => (
          <tr key={k}>
            <th>{k}</th>
            <td>{v}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/// A button that runs `action` after a confirmation, showing its error or result.
export function ActionButton({
  label,
  confirm,
  action,
  onDone,
}: {
  label: string;
  confirm?: string;
  action: () => Promise<unknown>;
  onDone?: () => void;
}) {
  const [busy, setBusy] = useState(false);
  const [err, setErr] = useState<Error | null>(null);
  return (
    <span>
      <button
        disabled={busy}
        onClick={async () => {
          if (confirm && !window.confirm(confirm)) return;
          setBusy(true);
          setErr(null);
          try {
            await action();
            onDone?.();
          } catch (e) {
            setErr(e as Error);
          }
          setBusy(false);
        }}
      >
        {label}
      </button>
      {err && <span className="error inline">{err.message}</span>}
    </span>
  );
}

export function link(path: string) {
  return `#${path}`;
}

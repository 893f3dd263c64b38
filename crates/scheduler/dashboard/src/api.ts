// The scheduler's JSON API (docs/http-api.md): the gRPC messages in the protobuf JSON mapping. 64-bit integers
// arrive as strings; `num` reads them.

const TOKEN_KEY = "aidos.token";
const PROJECT_KEY = "aidos.project";

export function token(): string {
  return localStorage.getItem(TOKEN_KEY) ?? "";
}
export function setToken(t: string) {
  localStorage.setItem(TOKEN_KEY, t.trim());
}
export function project(): string {
  return localStorage.getItem(PROJECT_KEY) ?? "";
}
export function setProject(p: string) {
  localStorage.setItem(PROJECT_KEY, p.trim());
}

/// A token handed over in the URL fragment (`aidos up` prints `http://.../#token=...`): kept, then removed from
/// the address bar so it is not left in history or screenshots.
export function adoptTokenFromUrl() {
  const m = location.hash.match(/^#token=([^&]+)/);
  if (m) {
    setToken(decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + "#/");
  }
}

export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  if (token()) headers["Authorization"] = `Bearer ${token()}`;
  if (project()) headers["aidos-project"] = project();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json: any = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    throw new ApiError(r.status, "", `${r.status} ${r.statusText}: ${text.slice(0, 200)}`);
  }
  if (!r.ok) throw new ApiError(r.status, json?.code ?? "", json?.error ?? `${r.status} ${r.statusText}`);
  return json as T;
}

export const get = <T = any>(path: string) => call<T>("GET", path);
export const post = <T = any>(path: string, body: unknown = {}) => call<T>("POST", path, body);

export function num(v: string | number | undefined | null): number {
  if (v === undefined || v === null || v === "") return 0;
  return typeof v === "number" ? v : Number(v);
}

export function qs(params: Record<string, string | number | undefined>): string {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== "") u.append(k, String(v));
  const s = u.toString();
  return s ? `?${s}` : "";
}

// ---- formatting -------------------------------------------------------------------------------------------------

/// JOB_STATE_RUNNING -> running
export function enumName(v: string | undefined, prefix: string): string {
  if (!v) return "";
  return v.startsWith(prefix) ? v.slice(prefix.length).toLowerCase() : v.toLowerCase();
}

export function when(ms: string | number | undefined): string {
  const t = num(ms);
  if (!t) return "";
  const d = new Date(t);
  return d.toISOString().replace("T", " ").slice(0, 19);
}

export function ago(ms: string | number | undefined): string {
  const t = num(ms);
  if (!t) return "never";
  const s = Math.max(0, (Date.now() - t) / 1000);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} d ago`;
}

export function bytes(v: string | number | undefined): string {
  const n = num(v);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let x = n;
  while (x >= 1024 && i < units.length - 1) {
    x /= 1024;
    i++;
  }
  return `${x.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function cores(millis: string | number | undefined): string {
  return (num(millis) / 1000).toFixed(1);
}

export function duration(fromMs: string | number | undefined, toMs: string | number | undefined): string {
  const a = num(fromMs);
  if (!a) return "";
  const b = num(toMs) || Date.now();
  const s = (b - a) / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

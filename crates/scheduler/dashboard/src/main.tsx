import { StrictMode, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { adoptTokenFromUrl, get, project, setProject, setToken, token } from "./api";
import { ClusterPage } from "./pages/cluster";
import { JobPage, JobsPage } from "./pages/jobs";
import { DatasetPage, ModelPage, RegistryPage } from "./pages/registry";
import { ComparePage, RunPage, RunsPage } from "./pages/runs";
import { DeploymentsPage, EdgePage, SweepPage, SweepsPage } from "./pages/serving";
import "./style.css";

const NAV: [string, string][] = [
  ["/", "Cluster"],
  ["/jobs", "Jobs"],
  ["/runs", "Runs"],
  ["/registry", "Registry"],
  ["/deployments", "Deployments"],
  ["/sweeps", "Sweeps"],
  ["/edge", "Edge"],
];

/// The page for a route (the URL fragment: `#/jobs/job-3`).
function page(path: string) {
  const p = path.split("/").filter(Boolean).map(decodeURIComponent);
  switch (p[0]) {
    case undefined:
      return <ClusterPage />;
    case "jobs":
      return p[1] ? <JobPage id={p[1]} /> : <JobsPage />;
    case "runs":
      return p[1] ? <RunPage id={p[1]} /> : <RunsPage />;
    case "compare":
      return <ComparePage ids={(p[1] ?? "").split(",").filter(Boolean)} />;
    case "registry":
      return <RegistryPage />;
    case "models":
      return <ModelPage name={p[1] ?? ""} />;
    case "datasets":
      return <DatasetPage name={p[1] ?? ""} version={p[2] ?? "0"} />;
    case "deployments":
      return <DeploymentsPage />;
    case "sweeps":
      return p[1] ? <SweepPage id={p[1]} /> : <SweepsPage />;
    case "edge":
      return <EdgePage />;
    default:
      return <p>No such page: {path}</p>;
  }
}

function useRoute(): string {
  const read = () => location.hash.replace(/^#/, "") || "/";
  const [route, setRoute] = useState(read);
  useEffect(() => {
    const on = () => setRoute(read());
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}

/// Who the token is (GET /v1/whoami), and the token and project fields.
function Identity({ onChange }: { onChange: () => void }) {
  const [who, setWho] = useState<string>("");
  const [editing, setEditing] = useState(!token());
  const [t, setT] = useState("");
  const [p, setP] = useState(project());
  useEffect(() => {
    if (!token()) return;
    get("/v1/whoami")
      .then((w) => setWho(`${w.name} (${w.role?.replace("ROLE_", "").toLowerCase()}, ${w.project || "default"})`))
      .catch((e) => setWho(`token refused: ${e.message}`));
  }, [editing]);
  if (!editing)
    return (
      <div className="identity">
        <span data-testid="whoami">{who}</span> <button onClick={() => setEditing(true)}>Change</button>
      </div>
    );
  return (
    <form
      className="identity"
      onSubmit={(e) => {
        e.preventDefault();
        if (t) setToken(t);
        setProject(p);
        setEditing(false);
        onChange();
      }}
    >
      <input type="password" placeholder="token (aidos_...)" value={t} onChange={(e) => setT(e.target.value)} aria-label="token" />
      <input placeholder="project (default)" value={p} onChange={(e) => setP(e.target.value)} aria-label="project" />
      <button type="submit">Use</button>
    </form>
  );
}

function App() {
  const route = useRoute();
  const [generation, setGeneration] = useState(0);
  const section = "/" + (route.split("/")[1] ?? "");
  const current = ({ "/models": "/registry", "/datasets": "/registry", "/compare": "/runs" } as Record<string, string>)[section] ?? section;
  return (
    <>
      <header>
        <a className="brand" href="#/">
          aidos
        </a>
        <nav>
          {NAV.map(([path, label]) => (
            <a key={path} href={`#${path}`} className={current === path ? "active" : ""}>
              {label}
            </a>
          ))}
        </nav>
        <Identity onChange={() => setGeneration((g) => g + 1)} />
      </header>
      <main key={`${route}#${generation}`}>{page(route.split("?")[0])}</main>
    </>
  );
}

adoptTokenFromUrl();
createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);

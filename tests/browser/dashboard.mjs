// Drives the dashboard in headless Chromium (Debian's `chromium`, through playwright-core) against a cluster that
// tests/dashboard.rs prepared: a trained model `digits:1` (job AIDOS_TRAIN_JOB), its deployment `digits`, and a
// long job AIDOS_LONG_JOB printing `tick N` every second. Checks that every page renders the right content, keeps
// a screenshot of each in AIDOS_SHOTS, and cancels the long job from its page. Exits non-zero on the first
// failed check, on a page error, or after a minute without progress on any one check.
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const URL = env("AIDOS_URL");
const TOKEN = env("AIDOS_TOKEN");
const TRAIN = env("AIDOS_TRAIN_JOB");
const LONG = env("AIDOS_LONG_JOB");
const SHOTS = env("AIDOS_SHOTS");
const CHROMIUM = process.env.AIDOS_CHROMIUM || "/usr/bin/chromium";
const WAIT = 60_000;

mkdirSync(SHOTS, { recursive: true });
// Root in CI: Chromium's sandbox needs user namespaces it may not get there.
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
const page = await browser.newPage({ viewport: { width: 1300, height: 900 } });
const problems = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("console", (m) => m.type() === "error" && problems.push(`console error: ${m.text()}`));
page.setDefaultTimeout(WAIT);

let step = "start";
async function check(name, f) {
  step = name;
  const t = Date.now();
  await f();
  if (problems.length) throw new Error(`${name}: ${problems.join("; ")}`);
  console.log(`ok   ${name} (${Date.now() - t} ms)`);
}
const shot = (name) => page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
const go = (route) => page.goto(`${URL}/#${route}`);
/// The text of `selector` once it contains every string of `wanted` and none of `unwanted`.
async function waitText(selector, wanted, unwanted = []) {
  const loc = page.locator(selector).first();
  const deadline = Date.now() + WAIT;
  let text = "";
  while (Date.now() < deadline) {
    text = (await loc.count()) ? await loc.innerText() : "";
    if (wanted.every((w) => text.includes(w)) && !unwanted.some((u) => text.includes(u))) return text;
    await page.waitForTimeout(200);
  }
  throw new Error(
    `${selector} never showed ${JSON.stringify(wanted)} without ${JSON.stringify(unwanted)}; it shows: ${text.slice(0, 800)}`,
  );
}

try {
  await check("sign in with a token handed over in the URL", async () => {
    await page.goto(`${URL}/#token=${encodeURIComponent(TOKEN)}`);
    await waitText("[data-testid=whoami]", ["root", "admin"]);
    if (page.url().includes("token=")) throw new Error(`the token stayed in the address bar: ${page.url()}`);
  });

  await check("cluster: leader, term and the worker with its capacity", async () => {
    await go("/");
    await waitText("main", ["Leader", "node 1", "Term"]);
    await waitText("[data-testid=workers]", ["w1", "ready", "/ 2.0"]);
    await shot("cluster");
  });

  await check("jobs: the list, filtered on the server", async () => {
    await go("/jobs");
    await waitText("[data-testid=jobs]", [TRAIN, "digits", "succeeded", LONG, "long-sleeper", "running"]);
    await shot("jobs");
    await page.selectOption("select[aria-label=state]", "running");
    await waitText("[data-testid=jobs]", [LONG, "serve-digits"], ["succeeded"]);
    await page.selectOption("select[aria-label=kind]", "process");
    await waitText("[data-testid=jobs]", [LONG], ["serve-digits", "succeeded"]);
    await page.selectOption("select[aria-label=state]", "");
    await page.selectOption("select[aria-label=kind]", "");
    await page.fill("input[aria-label=name]", "dig");
    await waitText("[data-testid=jobs]", [TRAIN, "succeeded"], ["long-sleeper"]);
  });

  await check("a training job: attempts, worker, exit code and its logs", async () => {
    await go(`/jobs/${TRAIN}`);
    await waitText("[data-testid=attempts]", ["w1", "succeeded", "0"]);
    await waitText("[data-testid=logs]", ["registered model digits:1"]);
    await shot("job-train");
  });

  await check("a run: metric charts drawn from the server's downsampled series", async () => {
    await go(`/runs/${TRAIN}.1`);
    await waitText("main", ["Run", TRAIN, "mnist@v1", "param optimizer.lr"]);
    for (const metric of ["train_loss", "test_accuracy", "samples_per_sec"]) {
      await page.locator(`[data-chart="${metric}"] canvas`).first().waitFor();
    }
    await shot("run");
  });

  await check("runs: the list and a comparison", async () => {
    await go("/runs");
    await waitText("[data-testid=runs]", [`${TRAIN}.1`, "mnist@v1", "test_accuracy"]);
    await shot("runs");
  });

  await check("registry: the model with its lineage and evaluation, the dataset with its histogram", async () => {
    await go("/registry");
    await waitText("[data-testid=models]", ["digits", "v1"]);
    await waitText("[data-testid=datasets]", ["mnist", "10,000"]);
    await shot("registry");
    await go("/models/digits");
    await waitText("[data-testid=versions]", ["v1", "mnist@v1", `${TRAIN}.1`, TRAIN, "evaluation"]);
    await waitText("[data-testid=confusion]", ["true \\ predicted", "precision", "recall"]);
    const rows = await page.locator("[data-testid=confusion] tbody tr").count();
    if (rows !== 11) throw new Error(`the confusion matrix has ${rows - 1} class rows, expected 10`);
    const acc = await waitText("[data-testid=eval-accuracy]", ["%"]);
    if (!(parseFloat(acc) > 80)) throw new Error(`evaluation accuracy ${acc}`);
    // An action next to what it acts on: set an alias, as `aidos model alias` would.
    await page.selectOption("select[aria-label=version]", "1");
    await page.fill("input[aria-label=alias]", "production");
    await page.click("text=Set alias");
    await waitText("[data-testid=versions]", ["production"]);
    await shot("model");
    await go("/datasets/mnist/1");
    await waitText("main", ["Dataset mnist@v1", "10,000", "train: rows 0–8000"]);
    const bars = await page.locator("[data-testid=histogram] .bar").count();
    if (bars !== 10) throw new Error(`label histogram has ${bars} bars, expected 10`);
    await shot("dataset");
  });

  await check("deployments: replicas, endpoints, readiness and live traffic from the replicas' metrics", async () => {
    await go("/deployments");
    await waitText("[data-testid=deployment-digits]", ["digits:1", "1 ready of 1", "ready", "127.0.0.1:"]);
    await waitText("[data-testid=traffic-digits]", ["req/s", "p99"]);
    await shot("deployments");
    // Scale it from the page: the deployment asks for two replicas (the second is placed beside the first).
    await page.fill("input[aria-label=replicas]", "2");
    await page.click("text=Scale");
    await waitText("[data-testid=deployment-digits]", ["of 2"]);
  });

  await check("a running job's logs are tailed live, then it is cancelled from its page", async () => {
    await go(`/jobs/${LONG}`);
    const first = await waitText("[data-testid=logs]", ["tick 1"]);
    const n = (first.match(/tick \d+/g) || []).length;
    // New lines arrive while the page stays open (the page polls by byte offset).
    const deadline = Date.now() + WAIT;
    while (((await page.locator("[data-testid=logs]").innerText()).match(/tick \d+/g) || []).length <= n + 1) {
      if (Date.now() > deadline) throw new Error("the log did not grow");
      await page.waitForTimeout(250);
    }
    const lines = (await page.locator("[data-testid=logs]").innerText()).match(/tick \d+/g);
    for (let i = 0; i < lines.length; i++) {
      if (lines[i] !== `tick ${i}`) throw new Error(`log line ${i} is ${lines[i]}: lost or repeated bytes`);
    }
    await shot("job-running");
    page.once("dialog", (d) => d.accept());
    await page.click("text=Cancel job");
    await waitText("main", ["cancelled"]);
    await shot("job-cancelled");
  });
} catch (e) {
  console.error(`FAILED ${step}: ${e.message}`);
  await shot(`failed-${step.replace(/[^a-z0-9]+/gi, "-")}`).catch(() => {});
  await browser.close();
  process.exit(1);
}
await browser.close();
console.log("dashboard: every check passed");

// Runs of every project the user belongs to, newest first, refreshed every 2 seconds.
// Project goes to the server; status, user and text filter what came back. Filters live in
// the address (`?status=running`) so a filtered view can be shared or reloaded.
import { enc, post } from "../api.js";
import { h, replace, table } from "../dom.js";
import { ago, price, RUN_STATUSES } from "../format.js";
import { errorBox, poll, projects } from "../live.js";

const FIELDS = ["project", "status", "user", "q"];

function readFilters(query) {
  return Object.fromEntries(FIELDS.map((k) => [k, query.get(k) || ""]));
}

function writeFilters(filters) {
  const q = new URLSearchParams();
  for (const k of FIELDS) if (filters[k]) q.set(k, filters[k]);
  const search = q.toString();
  history.replaceState(null, "", `/runs${search ? `?${search}` : ""}`);
}

export function statusBadge(status, extra) {
  return h("span", { class: `status s-${status}`, "data-status": status }, extra || status);
}

function runRow(run) {
  const name = run.run_spec.run_name;
  const sub = run.latest_job_submission;
  const conf = run.run_spec.configuration || {};
  const jpd = sub && sub.job_provisioning_data;
  return [
    h("a", { href: `/projects/${enc(run.project_name)}/runs/${enc(name)}`, class: "run-link" }, name),
    run.project_name,
    conf.type || "",
    run.user,
    statusBadge(run.status, run.status_message || run.status),
    jpd ? `${jpd.backend} ${jpd.instance_type.name}` : "",
    price(jpd && jpd.price),
    ago(run.submitted_at),
  ];
}

function matches(run, f) {
  if (f.status && run.status !== f.status) return false;
  if (f.user && !run.user.toLowerCase().includes(f.user.toLowerCase())) return false;
  if (f.q) {
    const text = `${run.run_spec.run_name} ${JSON.stringify(run.run_spec.configuration)}`;
    if (!text.toLowerCase().includes(f.q.toLowerCase())) return false;
  }
  return true;
}

export function runsPage(main, { query }) {
  const filters = readFilters(query);
  const body = h("div", { id: "runs" });
  const updated = h("span", { class: "muted", id: "updated" });
  const projectSel = h("select", { name: "project" }, h("option", { value: "" }, "All projects"));
  const statusSel = h("select", { name: "status" }, h("option", { value: "" }, "Any status"),
    RUN_STATUSES.map((st) => h("option", { value: st, selected: st === filters.status }, st)));
  const userIn = h("input", { name: "user", placeholder: "User", value: filters.user });
  const textIn = h("input", { name: "q", type: "search", placeholder: "Search runs", value: filters.q });
  let latest = [];

  const draw = () => {
    const rows = latest.filter((r) => matches(r, filters)).map(runRow);
    replace(body, table(
      ["Run", "Project", "Type", "User", "Status", "Instance", "Price", "Submitted"],
      rows, latest.length ? "No run matches the filters." : "No runs yet: `dstack apply` one."));
  };
  const onFilter = (key, el, event) => el.addEventListener(event, () => {
    filters[key] = el.value.trim();
    writeFilters(filters);
    draw();
  });
  onFilter("status", statusSel, "change");
  onFilter("user", userIn, "input");
  onFilter("q", textIn, "input");
  projectSel.addEventListener("change", () => {
    filters.project = projectSel.value;
    writeFilters(filters);
    latest = [];
    replace(body, h("p", { class: "muted" }, "Loading…"));
  });
  projects().then((list) => list.forEach((p) => projectSel.append(
    h("option", { value: p.project_name, selected: p.project_name === filters.project },
      p.project_name)))).catch(() => {});

  const form = h("form", { class: "filters", role: "search" }, projectSel, statusSel, userIn, textIn);
  form.addEventListener("submit", (e) => e.preventDefault());
  replace(main, h("div", { class: "pagehead" }, h("h1", {}, "Runs"), updated), form, body);
  return poll(async () => {
    try {
      const req = { limit: 100, job_submissions_limit: 1 };
      if (filters.project) req.project_name = filters.project;
      latest = await post("/api/runs/list", req);
      replace(updated, `Updated ${new Date().toLocaleTimeString()}`);
      draw();
    } catch (e) {
      errorBox(body, e);
    }
  }, 2000);
}

// One run: its status and actions, jobs, live logs, metrics, events and configuration.
// The run is re-read every 2 s while it is active; logs follow the chosen job's latest
// submission through the same `logs/poll` cursor the CLI uses.
import { enc, post } from "../api.js";
import { h, replace, table } from "../dom.js";
import { ago, FINISHED_RUN, price, resources, when } from "../format.js";
import { errorBox, poll, stopAll } from "../live.js";
import { statusBadge } from "./runs.js";
import { followLogs } from "./logs.js";
import { metricsPanel } from "./metrics.js";

function jobRows(run, chosen, onChoose) {
  return run.jobs.map((job) => {
    const spec = job.job_spec;
    const sub = job.job_submissions[job.job_submissions.length - 1] || {};
    const jpd = sub.job_provisioning_data;
    const key = `${spec.replica_num}/${spec.job_num}`;
    const pick = h("button", { type: "button", class: key === chosen ? "small active" : "small" },
      key === chosen ? "shown" : "show");
    pick.addEventListener("click", () => onChoose(spec.replica_num, spec.job_num));
    return [
      spec.job_name, String(spec.replica_num), String(spec.job_num),
      String(sub.submission_num ?? ""),
      statusBadge(sub.status || "submitted", sub.status_message || sub.status),
      sub.termination_reason || "",
      jpd ? `${jpd.backend} ${jpd.region} ${jpd.instance_type.name}` : "",
      jpd ? resources(jpd.instance_type.resources) : "",
      price(jpd && jpd.price), ago(sub.submitted_at), pick,
    ];
  });
}

function actions(run, project, navigate, onDone) {
  const name = run.run_spec.run_name;
  const finished = FINISHED_RUN.has(run.status);
  const out = h("div", { class: "actions" });
  const button = (label, id, cls, handler) => {
    const b = h("button", { type: "button", id, class: cls }, label);
    b.addEventListener("click", async () => {
      b.disabled = true;
      try { await handler(); } catch (e) { alert(e.message); } finally { b.disabled = false; }
    });
    out.append(b);
  };
  if (!finished) {
    button("Stop", "stop", "warn", async () => {
      if (!confirm(`Stop run ${name}?`)) return;
      await post(`/api/project/${enc(project)}/runs/stop`, { runs_names: [name], abort: false });
      onDone();
    });
    button("Abort", "abort", "danger", async () => {
      if (!confirm(`Abort run ${name}? Its jobs are killed without a graceful stop.`)) return;
      await post(`/api/project/${enc(project)}/runs/stop`, { runs_names: [name], abort: true });
      onDone();
    });
  } else {
    button("Delete", "delete", "danger", async () => {
      if (!confirm(`Delete run ${name}? Its record and logs go away.`)) return;
      await post(`/api/project/${enc(project)}/runs/delete`, { runs_names: [name] });
      navigate("/runs");
    });
  }
  return out;
}

function summary(run) {
  const conf = run.run_spec.configuration || {};
  const items = [
    ["Project", run.project_name], ["User", run.user], ["Type", conf.type || ""],
    ["Submitted", when(run.submitted_at)], ["Fleet", run.fleet ? run.fleet.name : ""],
    ["Cost", price(run.cost)], ["Termination", run.termination_reason || ""],
    ["Service", run.service ? run.service.url : ""], ["Error", run.error || ""],
  ].filter(([, v]) => v);
  return h("dl", { class: "summary" }, items.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

/** The configuration as the user wrote it: the server's defaults (null, empty) left out. */
function pruned(value) {
  if (Array.isArray(value)) return value.map(pruned);
  if (value && typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) {
      const p = pruned(v);
      const empty = p === null || (typeof p === "object" && Object.keys(p).length === 0);
      if (!empty) out[k] = p;
    }
    return out;
  }
  return value;
}

function eventsTable(events) {
  return table(["Time", "Event", "Actor", "Targets"], events.map((e) => [
    when(e.recorded_at), e.message, e.actor_user || "",
    e.targets.map((t) => `${t.type} ${t.name}`).join(", "),
  ]), "No events yet.");
}

export function runPage(main, { params, navigate }) {
  const [project, name] = params;
  const head = h("div", { class: "pagehead" });
  const info = h("section", { id: "summary" });
  const jobs = h("section", { id: "jobs" });
  const logsBox = h("section", { id: "logs-section" });
  const metricsBox = h("section", { id: "metrics" });
  const eventsBox = h("section", { id: "events" });
  const confBox = h("pre", { id: "configuration", class: "code" });
  replace(main, head, info,
    h("h2", {}, "Jobs"), jobs,
    h("h2", {}, "Logs"), logsBox,
    h("h2", {}, "Metrics"), metricsBox,
    h("h2", {}, "Events"), eventsBox,
    h("h2", {}, "Configuration"), confBox);

  let chosen = [0, 0];
  let stopLogs = null, stopMetrics = null;
  let run = null;
  let follow = null;
  const choose = (replica, job) => {
    chosen = [replica, job];
    restartFollowers();
    draw();
  };
  const restartFollowers = () => {
    if (stopLogs) stopLogs();
    if (stopMetrics) stopMetrics();
    const active = () => run && !FINISHED_RUN.has(run.status);
    const submission = () => {
      const job = run && run.jobs.find((j) =>
        j.job_spec.replica_num === chosen[0] && j.job_spec.job_num === chosen[1]);
      return job ? job.job_submissions[job.job_submissions.length - 1] : null;
    };
    follow = followLogs(logsBox, project, name, submission, active);
    stopLogs = follow.stop;
    stopMetrics = metricsPanel(metricsBox, project, name, chosen, active);
  };
  const draw = () => {
    replace(head, h("h1", {}, name, " ", statusBadge(run.status, run.status_message || run.status)),
      actions(run, project, navigate, refresh));
    replace(info, summary(run));
    replace(jobs, table(
      ["Job", "Replica", "Node", "Submission", "Status", "Reason", "Instance", "Resources",
        "Price", "Submitted", ""],
      jobRows(run, `${chosen[0]}/${chosen[1]}`, choose), "No jobs yet."));
    confBox.textContent = JSON.stringify(pruned(run.run_spec.configuration), null, 2);
  };
  const refresh = () => stopRun.now();
  const stopRun = poll(async () => {
    try {
      run = await post(`/api/project/${enc(project)}/runs/get`, { run_name: name });
    } catch (e) {
      errorBox(head, e);
      return e.status !== 400; // a deleted or unknown run: stop asking
    }
    draw();
    if (!follow) restartFollowers();
    else follow.wake();
    const events = await post("/api/events/list",
      { project_name: project, within_run: name, limit: 200 });
    replace(eventsBox, eventsTable(events));
    // A finished run changes rarely (a late event, a delete elsewhere): look less often.
    return FINISHED_RUN.has(run.status) ? 10000 : 2000;
  }, 2000);
  return stopAll(stopRun, () => stopLogs && stopLogs(), () => stopMetrics && stopMetrics());
}

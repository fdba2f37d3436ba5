// A job's metrics as small SVG charts: `GET /api/project/{p}/metrics/job/{run}` answers
// {"metrics": [{"name", "timestamps", "values"}]}. A server without the route (404) or a
// job without samples shows "no metrics".
import { enc, get } from "../api.js";
import { h, replace } from "../dom.js";
import { lineChart } from "../chart.js";
import { poll } from "../live.js";

const LIMIT = 300;

export function metricsPanel(box, project, runName, [replica, job], active) {
  replace(box, h("p", { class: "muted" }, "Loading metrics…"));
  const url = `/api/project/${enc(project)}/metrics/job/${enc(runName)}`
    + `?replica_num=${replica}&job_num=${job}&limit=${LIMIT}`;
  return poll(async () => {
    let answer;
    try {
      answer = await get(url);
    } catch (e) {
      if (e.status === 404 || e.status === 400) {
        replace(box, h("p", { class: "muted", id: "no-metrics" }, "No metrics for this job."));
        return active() ? 10000 : false;
      }
      replace(box, h("p", { class: "error" }, e.message));
      return 10000;
    }
    const series = (answer.metrics || []).filter((m) => m.values && m.values.length);
    if (!series.length) {
      replace(box, h("p", { class: "muted", id: "no-metrics" }, "No metrics for this job yet."));
    } else {
      replace(box, h("div", { class: "charts" }, series.map(lineChart)));
    }
    return active() ? 5000 : false;
  }, 5000);
}

// Volumes of the chosen project, refreshed every 5 s.
import { enc, post } from "../api.js";
import { h, replace, table } from "../dom.js";
import { ago } from "../format.js";
import { errorBox, poll, projectHeader } from "../live.js";
import { statusBadge } from "./runs.js";

function row(v) {
  const conf = v.configuration || {};
  const attached = (v.attachments || []).map((a) => a.instance_name || a.instance_id || "").join(", ");
  return [
    v.name, conf.backend || "", conf.region || "", conf.size ? String(conf.size) : "",
    statusBadge(v.status, v.status_message ? `${v.status} (${v.status_message})` : v.status),
    v.external ? "yes" : "", attached, v.user || "", ago(v.created_at),
  ];
}

export function volumesPage(main) {
  const head = h("div");
  const body = h("div", { id: "volumes" });
  replace(main, head, body);
  let stop = null;
  const start = (project) => {
    if (stop) stop();
    stop = poll(async () => {
      try {
        const vols = await post(`/api/project/${enc(project)}/volumes/list`);
        replace(body, table(["Name", "Backend", "Region", "Size", "Status", "External",
          "Attached to", "User", "Created"], vols.map(row), "No volumes in this project."));
      } catch (e) {
        errorBox(body, e);
      }
    }, 5000);
  };
  projectHeader(head, "Volumes", start).then(start).catch((e) => errorBox(body, e));
  return () => stop && stop();
}

// Fleets of the chosen project with their instances, refreshed every 5 s.
import { enc, post } from "../api.js";
import { h, replace, table } from "../dom.js";
import { ago, price, resources } from "../format.js";
import { errorBox, poll, projectHeader } from "../live.js";
import { statusBadge } from "./runs.js";

function instanceRows(fleet) {
  return fleet.instances.map((i) => [
    `${fleet.name}-${i.instance_num}`, i.backend || "", i.region || "",
    i.instance_type ? i.instance_type.name : "",
    i.instance_type ? resources(i.instance_type.resources) : "",
    statusBadge(i.status, i.unreachable ? `${i.status} (unreachable)` : i.status),
    i.total_blocks && i.total_blocks > 1 ? `${i.busy_blocks}/${i.total_blocks}` : "",
    i.job_name || "", price(i.price), i.hostname || "", ago(i.created),
  ]);
}

function fleetCard(fleet) {
  const conf = fleet.spec.configuration || {};
  return h("section", { class: "card fleet", "data-fleet": fleet.name },
    h("h2", {}, fleet.name, " ", statusBadge(fleet.status, fleet.status)),
    h("p", { class: "muted" },
      [conf.ssh_config ? "SSH fleet" : "cloud fleet", fleet.status_message || "",
        `created ${ago(fleet.created_at)}`].filter(Boolean).join(" · ")),
    table(["Instance", "Backend", "Region", "Type", "Resources", "Status", "Blocks", "Job",
      "Price", "Host", "Created"], instanceRows(fleet), "No instances."));
}

export function fleetsPage(main) {
  const head = h("div");
  const body = h("div", { id: "fleets" });
  replace(main, head, body);
  let project = null;
  let stop = null;
  const start = (name) => {
    project = name;
    if (stop) stop();
    stop = poll(async () => {
      try {
        const fleets = await post(`/api/project/${enc(project)}/fleets/list`);
        replace(body, fleets.length ? fleets.map(fleetCard)
          : h("p", { class: "empty" }, "No fleets in this project."));
      } catch (e) {
        errorBox(body, e);
      }
    }, 5000);
  };
  projectHeader(head, "Fleets", start).then(start).catch((e) => errorBox(body, e));
  return () => stop && stop();
}

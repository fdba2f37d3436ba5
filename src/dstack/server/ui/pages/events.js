// The project's events feed: the latest 100, then what is new every 3 s (`since` the last
// one seen; the server answers oldest first). Newest at the top.
import { post } from "../api.js";
import { h, replace } from "../dom.js";
import { when } from "../format.js";
import { errorBox, poll, projectHeader } from "../live.js";

function eventRow(e) {
  return h("tr", { "data-event": e.id },
    h("td", {}, when(e.recorded_at)),
    h("td", {}, e.message),
    h("td", {}, e.actor_user || ""),
    h("td", {}, e.targets.map((t) => `${t.type} ${t.name}`).join(", ")));
}

export function eventsPage(main) {
  const head = h("div");
  const body = h("div", { id: "events" });
  replace(main, head, body);
  let stop = null;
  const start = (project) => {
    if (stop) stop();
    const seen = new Set();
    let since = null;
    const tbody = h("tbody");
    replace(body, h("table", {},
      h("thead", {}, h("tr", {}, ["Time", "Event", "Actor", "Targets"].map((x) => h("th", {}, x)))),
      tbody));
    stop = poll(async () => {
      try {
        const req = { project_name: project, limit: 100 };
        if (since) req.since = since;
        const events = await post("/api/events/list", req);
        for (const e of events) {
          if (seen.has(e.id)) continue;
          tbody.querySelector(".placeholder")?.remove();
          seen.add(e.id);
          tbody.prepend(eventRow(e));
          if (!since || e.recorded_at > since) since = e.recorded_at;
        }
        if (!tbody.children.length) tbody.append(h("tr", { class: "placeholder" }, h("td", { colspan: "4" }, "No events yet.")));
      } catch (e) {
        errorBox(body, e);
      }
    }, 3000);
  };
  projectHeader(head, "Events", start).then(start).catch((e) => errorBox(body, e));
  return () => stop && stop();
}

// Offers for a resource request, as `dstack offer` lists them: an unconstrained task narrowed
// by the form (GPU, CPU, memory, spot policy, max price); the server validates the values.
import { enc, post } from "../api.js";
import { h, replace, table } from "../dom.js";
import { price, resources } from "../format.js";
import { errorBox, projectHeader } from "../live.js";

function field(label, name, placeholder, value = "") {
  return h("label", {}, label, h("input", { name, placeholder, value }));
}

function configuration(form) {
  const data = new FormData(form);
  const res = { cpu: data.get("cpu") || "1..", memory: data.get("memory") || "0GB..",
    gpu: data.get("gpu") || "0.." };
  const conf = { type: "task", commands: [":"], resources: res,
    spot_policy: data.get("spot_policy") || "auto" };
  const max = data.get("max_price");
  if (max) conf.max_price = Number(max);
  return conf;
}

export function offersPage(main) {
  const head = h("div");
  const form = h("form", { class: "filters", id: "offers-form" },
    field("GPU ", "gpu", "e.g. H100:8, 24GB.., 0.."),
    field("CPU ", "cpu", "1.."), field("Memory ", "memory", "0GB.."),
    h("label", {}, "Spot ", h("select", { name: "spot_policy" },
      ["auto", "spot", "on-demand"].map((x) => h("option", { value: x }, x)))),
    field("Max price ", "max_price", "$/hour"),
    h("button", { type: "submit" }, "Find offers"));
  const body = h("div", { id: "offers" });
  replace(main, head, form, body);
  let project = null;
  const search = async () => {
    replace(body, h("p", { class: "muted" }, "Asking the backends…"));
    try {
      const answer = await post(`/api/project/${enc(project)}/offers/list`,
        { run_spec: { configuration: configuration(form) }, max_offers: 50 });
      const rows = answer.offers.map((o) => [
        o.backend, o.region, o.instance.name, resources(o.instance.resources),
        o.instance.resources.spot ? "spot" : "on-demand", price(o.price), o.availability || "",
      ]);
      replace(body,
        (answer.notes || []).map((n) => h("p", { class: "warning" }, n)),
        h("p", { class: "muted" }, `${answer.total_offers} offers in total`),
        table(["Backend", "Region", "Instance", "Resources", "Spot", "Price", "Availability"],
          rows, "No offers match."));
    } catch (e) {
      errorBox(body, e);
    }
  };
  form.addEventListener("submit", (e) => { e.preventDefault(); search(); });
  projectHeader(head, "Offers", (p) => { project = p; search(); })
    .then((p) => { project = p; search(); })
    .catch((e) => errorBox(body, e));
  return () => {};
}

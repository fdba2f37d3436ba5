// A project's secrets: names only (values are never shown here), add or replace one, delete.
// Who may manage them is the server's decision; its refusal is shown as it comes.
import { enc, post } from "../api.js";
import { h, replace, table } from "../dom.js";
import { errorBox, projectHeader } from "../live.js";

export function secretsPage(main) {
  const head = h("div");
  const status = h("p", { role: "status", class: "muted" });
  const body = h("div", { id: "secrets" });
  const form = h("form", { class: "filters", id: "secret-form" },
    h("label", {}, "Name ", h("input", { name: "name", required: true, autocomplete: "off" })),
    h("label", {}, "Value ", h("input", { name: "value", type: "password", required: true,
      autocomplete: "new-password" })),
    h("button", { type: "submit" }, "Save secret"));
  replace(main, head, form, status, body);
  let project = null;
  const base = () => `/api/project/${enc(project)}/secrets`;

  const load = async () => {
    try {
      const secrets = await post(`${base()}/list`);
      replace(body, table(["Name", ""], secrets.map((x) => {
        const del = h("button", { type: "button", class: "small danger" }, "Delete");
        del.addEventListener("click", async () => {
          if (!confirm(`Delete secret ${x.name}?`)) return;
          try {
            await post(`${base()}/delete`, { secrets_names: [x.name] });
            load();
          } catch (e) { errorBox(status, e); }
        });
        return [x.name, del];
      }), "No secrets in this project."));
    } catch (e) {
      if (e.status === 404) replace(body, h("p", { class: "muted" }, "This server has no secrets API."));
      else errorBox(body, e);
    }
  };
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    try {
      await post(`${base()}/create_or_update`, { name: data.get("name"), value: data.get("value") });
      replace(status, `Saved ${data.get("name")}.`);
      form.reset();
      load();
    } catch (err) { errorBox(status, err); }
  });
  projectHeader(head, "Secrets", (p) => { project = p; load(); })
    .then((p) => { project = p; load(); })
    .catch((e) => errorBox(body, e));
  return () => {};
}

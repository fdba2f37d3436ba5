// Projects the user belongs to, and one project's members. Global admins and the project's
// admins and managers get the controls to add, re-role and remove members; the server checks
// the same rules, so a control shown by mistake would only get a refusal.
import { enc, post } from "../api.js";
import { h, replace, table } from "../dom.js";
import { when } from "../format.js";
import { errorBox } from "../live.js";

const ROLES = ["admin", "manager", "user"];

function roleOf(project, me) {
  const m = project.members.find((x) => x.user.username === me.username);
  return m ? m.project_role : null;
}

export function projectsPage(main, { me }) {
  const body = h("div", { id: "projects" });
  replace(main, h("div", { class: "pagehead" }, h("h1", {}, "Projects")), body);
  post("/api/projects/list").then((list) => replace(body, table(
    ["Project", "Owner", "Your role", "Members", "Created"],
    list.map((p) => [
      h("a", { href: `/projects/${enc(p.project_name)}` }, p.project_name),
      p.owner ? p.owner.username : "", roleOf(p, me) || (me.global_role === "admin" ? "(global admin)" : ""),
      String(p.members.length), when(p.created_at),
    ]), "You are in no project."))).catch((e) => errorBox(body, e));
  return () => {};
}

export function projectPage(main, { params, me }) {
  const [name] = params;
  const status = h("p", { role: "status", class: "muted" });
  const body = h("div", { id: "members" });
  replace(main, h("div", { class: "pagehead" }, h("h1", {}, `Project ${name}`)), status, body);
  const call = async (path, payload) => {
    try {
      await post(`/api/projects/${enc(name)}/${path}`, payload);
      replace(status, "Saved.");
      load();
    } catch (e) {
      if (e.status === 404) replace(status, "This server cannot change members yet.");
      else errorBox(status, e);
    }
  };
  const load = async () => {
    let project;
    try {
      project = await post(`/api/projects/${enc(name)}/get`);
    } catch (e) { errorBox(body, e); return; }
    const role = roleOf(project, me);
    const manage = me.global_role === "admin" || role === "admin" || role === "manager";
    const rows = project.members.map((m) => {
      if (!manage) return [m.user.username, m.project_role];
      const sel = h("select", { name: "role" },
        ROLES.map((r) => h("option", { value: r, selected: r === m.project_role }, r)));
      sel.addEventListener("change", () => call("add_members",
        { members: [{ username: m.user.username, project_role: sel.value }] }));
      const rm = h("button", { type: "button", class: "small danger" }, "Remove");
      rm.addEventListener("click", () => {
        if (confirm(`Remove ${m.user.username} from ${name}?`)) {
          call("remove_members", { usernames: [m.user.username] });
        }
      });
      return [m.user.username, sel, rm];
    });
    const parts = [h("h2", {}, "Members"),
      table(manage ? ["User", "Role", ""] : ["User", "Role"], rows, "No members.")];
    if (manage) {
      const form = h("form", { class: "filters", id: "add-member" },
        h("input", { name: "username", placeholder: "Username", required: true }),
        h("select", { name: "role" }, ROLES.map((r) => h("option", { value: r, selected: r === "user" }, r))),
        h("button", { type: "submit" }, "Add member"));
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        const data = new FormData(form);
        call("add_members", { members: [{ username: data.get("username"), project_role: data.get("role") }] });
      });
      parts.push(form);
    }
    replace(body, parts);
  };
  load();
  return () => {};
}

// Polling that stops when the page is left, never overlaps itself, and shows errors.
import { h, replace } from "./dom.js";
import { post } from "./api.js";

/**
 * Call `tick()` now and then `ms` after each call finishes, until the returned stop().
 * `tick` may answer false (stop polling) or a number (the next delay). `stop.now()` polls
 * at once (after the call in flight, if any), e.g. right after a button changed something.
 */
export function poll(tick, ms) {
  let stopped = false, running = false, again = false;
  let timer = null;
  const loop = async () => {
    if (stopped) return;
    if (running) { again = true; return; }
    running = true;
    clearTimeout(timer);
    let next = ms;
    try {
      const answer = await tick();
      if (answer === false) next = null;
      else if (typeof answer === "number") next = answer;
    } catch (e) {
      console.error(e);
    }
    running = false;
    if (stopped) return;
    if (again) { again = false; loop(); return; }
    if (next !== null) timer = setTimeout(loop, next);
  };
  loop();
  const stop = () => { stopped = true; clearTimeout(timer); };
  stop.now = loop;
  return stop;
}

export function errorBox(el, err) {
  replace(el, h("p", { class: "error", role: "alert" }, err.message || String(err)));
}

export function stopAll(...stops) {
  return () => stops.forEach((f) => f && f());
}

let projectsCache = null;
export async function projects() {
  if (!projectsCache) projectsCache = post("/api/projects/list").catch((e) => {
    projectsCache = null;
    throw e;
  });
  return projectsCache;
}

const PROJECT_KEY = "dstack.project";
export function currentProject(list) {
  const saved = localStorage.getItem(PROJECT_KEY);
  const names = (list || []).map((p) => p.project_name);
  if (saved && names.includes(saved)) return saved;
  return names.includes("main") ? "main" : names[0] || "main";
}
export function setCurrentProject(name) {
  localStorage.setItem(PROJECT_KEY, name);
}

/** A page header with a project picker; `onChange(name)` re-renders the page's body. */
export async function projectHeader(el, title, onChange) {
  const list = await projects();
  let current = currentProject(list);
  const picker = h("select", { name: "project", id: "project" },
    list.map((p) => h("option", { value: p.project_name, selected: p.project_name === current },
      p.project_name)));
  picker.addEventListener("change", () => {
    current = picker.value;
    setCurrentProject(current);
    onChange(current);
  });
  replace(el, h("div", { class: "pagehead" }, h("h1", {}, title),
    h("label", {}, "Project ", picker)));
  return current;
}

// The UI's shell: the navigation bar, a path router over the History API and each page's
// lifecycle (a page returns a `stop` function that ends its polling when you leave it).
import { post, setToken, takeTokenFromUrl, token, whenUnauthorized } from "./api.js";
import { h, replace } from "./dom.js";
import { loginPage } from "./pages/login.js";
import { runsPage } from "./pages/runs.js";
import { runPage } from "./pages/run.js";
import { fleetsPage } from "./pages/fleets.js";
import { offersPage } from "./pages/offers.js";
import { volumesPage } from "./pages/volumes.js";
import { secretsPage } from "./pages/secrets.js";
import { projectsPage, projectPage } from "./pages/projects.js";
import { eventsPage } from "./pages/events.js";

const ROUTES = [
  [/^\/$/, runsPage],
  [/^\/runs$/, runsPage],
  [/^\/projects\/([^/]+)\/runs\/([^/]+)$/, runPage],
  [/^\/fleets$/, fleetsPage],
  [/^\/offers$/, offersPage],
  [/^\/volumes$/, volumesPage],
  [/^\/secrets$/, secretsPage],
  [/^\/projects$/, projectsPage],
  [/^\/projects\/([^/]+)$/, projectPage],
  [/^\/events$/, eventsPage],
];
const NAV = [
  ["/runs", "Runs"], ["/fleets", "Fleets"], ["/offers", "Offers"], ["/volumes", "Volumes"],
  ["/events", "Events"], ["/secrets", "Secrets"], ["/projects", "Projects"],
];

const root = document.getElementById("app");
let stopPage = null;
let me = null;

export function navigate(path) {
  history.pushState(null, "", path);
  render();
}

function nav() {
  // A run's page (/projects/p/runs/r) belongs to Runs, not to Projects.
  const here = location.pathname === "/" || /\/runs\//.test(location.pathname)
    ? "/runs" : location.pathname;
  return h(
    "header",
    { class: "topbar" },
    h("a", { href: "/runs", class: "brand" }, "dstack"),
    h("nav", {}, NAV.map(([href, label]) =>
      h("a", { href, class: here.startsWith(href) ? "active" : null }, label))),
    h("span", { class: "spacer" }),
    me ? h("span", { class: "muted", id: "whoami" }, me.username) : null,
    h("button", { type: "button", class: "link", id: "signout", onclick: signOut }, "Sign out"),
  );
}

function signOut() {
  setToken(null);
  me = null;
  navigate("/login");
}

async function render() {
  if (stopPage) stopPage();
  stopPage = null;
  if (location.pathname === "/login" || !token()) {
    if (location.pathname !== "/login") history.replaceState(null, "", "/login");
    const main = h("main", { class: "narrow" });
    replace(root, main);
    loginPage(main, { onSignedIn: () => { me = null; navigate("/runs"); } });
    return;
  }
  if (!me) {
    try {
      me = await post("/api/users/get_my_user");
    } catch (e) {
      if (e.status === 403) return; // whenUnauthorized has sent us to the sign-in page
      me = { username: "?", global_role: "user" };
    }
  }
  const main = h("main", {});
  replace(root, nav(), main);
  const path = location.pathname.replace(/\/+$/, "") || "/";
  for (const [pattern, page] of ROUTES) {
    const m = path.match(pattern);
    if (m) {
      const params = m.slice(1).map(decodeURIComponent);
      stopPage = page(main, { params, me, navigate, query: new URLSearchParams(location.search) });
      return;
    }
  }
  replace(main, h("h1", {}, "Not found"), h("p", {}, "No page at this address. "),
    h("a", { href: "/runs" }, "Back to runs"));
}

// Same-origin links go through the router instead of reloading the page.
document.addEventListener("click", (e) => {
  const a = e.target.closest("a[href]");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith("/api/")) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", render);
whenUnauthorized(() => {
  if (location.pathname === "/login") return; // the sign-in form shows its own message
  setToken(null);
  me = null;
  history.replaceState(null, "", "/login");
  render();
});

if (takeTokenFromUrl() && location.pathname === "/login") history.replaceState(null, "", "/runs");
render();

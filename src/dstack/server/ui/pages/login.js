// Sign in with a user's token (the admin token `dstack server` printed, or one an admin
// created); the token is checked against the server before it is kept.
import { post, setToken } from "../api.js";
import { h, replace } from "../dom.js";

export function loginPage(main, { onSignedIn }) {
  const input = h("input", {
    type: "password", name: "token", id: "token", autocomplete: "current-password",
    placeholder: "Token", required: true,
  });
  const status = h("p", { class: "error", role: "alert" });
  const form = h(
    "form",
    { class: "card", id: "login" },
    h("h1", {}, "Sign in to dstack"),
    h("p", { class: "muted" },
      "Paste your token: `dstack server` prints the admin's, and ~/.dstack/config.yml keeps it."),
    h("label", { for: "token" }, "Token"),
    input,
    h("button", { type: "submit" }, "Sign in"),
    status,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    try {
      await post("/api/users/get_my_user");
      onSignedIn();
    } catch (err) {
      setToken(null);
      replace(status, err.status === 403 ? "That token is not valid on this server." : err.message);
    }
  });
  replace(main, form);
  input.focus();
}

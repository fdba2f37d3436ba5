// A job's logs as they are written: the `logs/poll` cursor (next_token is the position after
// the last record; null when nothing new), decoded from base64 as one UTF-8 stream so a
// character split across records survives. The view sticks to the bottom unless scrolled up.
import { enc, post } from "../api.js";
import { h, replace } from "../dom.js";
import { stripAnsi } from "../format.js";
import { poll } from "../live.js";

const MAX_CHARS = 2_000_000; // the browser stays fast; the CLI has the whole log

function decode(b64) {
  const raw = atob(b64);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i += 1) out[i] = raw.charCodeAt(i);
  return out;
}

export function followLogs(box, project, runName, submission, active) {
  const pre = h("pre", { id: "logs", class: "logs", tabindex: "0" });
  const note = h("p", { class: "muted", id: "logs-note" }, "Waiting for the job to start…");
  replace(box, note, pre);
  let subId = null, token = null, decoder = new TextDecoder();

  const append = (text) => {
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    pre.append(document.createTextNode(stripAnsi(text)));
    if (pre.textContent.length > MAX_CHARS) {
      pre.textContent = pre.textContent.slice(-MAX_CHARS / 2);
    }
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  };

  const drain = async (id) => {
    for (;;) {
      const page = await post(`/api/project/${enc(project)}/logs/poll`, {
        run_name: runName, job_submission_id: id, next_token: token, limit: 1000,
      });
      for (const event of page.logs) append(decoder.decode(decode(event.message), { stream: true }));
      if (!page.next_token || page.next_token === token) return;
      token = page.next_token;
      if (!page.logs.length) return;
    }
  };

  const stop = poll(async () => {
    const sub = submission();
    if (!sub) return 1000;
    if (sub.id !== subId) {
      subId = sub.id;
      token = null;
      decoder = new TextDecoder();
      pre.replaceChildren();
    }
    const wasActive = active();
    await drain(subId);
    replace(note, wasActive ? `Following submission ${sub.submission_num} (live)`
      : `Submission ${sub.submission_num} (finished)`);
    if (!pre.textContent) pre.textContent = wasActive ? "" : "(no output)";
    return wasActive ? 1000 : false; // one last drain after the run ended, then stop
  }, 1000);
  return { stop, wake: () => { if (active() || !subId) stop.now(); } };
}

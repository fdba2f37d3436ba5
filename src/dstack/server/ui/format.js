// Small formatters shared by the pages.

export function ago(iso) {
  if (!iso) return "";
  const secs = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (secs < 60) return `${Math.floor(secs)}s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h ago`;
  return `${Math.floor(secs / 86400)}d ago`;
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

export function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)}${units[i]}`;
}

export function price(p) {
  return p === null || p === undefined ? "" : `$${Number(p).toFixed(4).replace(/0+$/, "").replace(/\.$/, "")}`;
}

export function resources(r) {
  if (!r) return "";
  const parts = [`${r.cpus}xCPU`, `${Math.round(r.memory_mib / 1024)}GB`];
  if (r.gpus && r.gpus.length) {
    parts.push(`${r.gpus.length}x${r.gpus[0].name} (${Math.round(r.gpus[0].memory_mib / 1024)}GB)`);
  }
  if (r.disk) parts.push(`${Math.round(r.disk.size_mib / 1024)}GB disk`);
  if (r.spot) parts.push("spot");
  return parts.join(", ");
}

// Terminal colour codes and cursor moves mean nothing in a <pre>.
const ANSI = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07/g;
export function stripAnsi(text) {
  return text.replace(ANSI, "");
}

export const FINISHED_RUN = new Set(["terminated", "failed", "done"]);
export const RUN_STATUSES = [
  "pending", "submitted", "provisioning", "running", "terminating", "terminated", "failed", "done",
];

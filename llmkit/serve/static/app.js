// llmkit chat page: multi-turn chat over /v1/chat/completions with streaming (SSE over fetch), a stop button
// (AbortController: the server aborts the request when the connection closes), and errors shown as the
// server's OpenAI error message. Text is inserted with textContent only, so model output is never HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];  // {role, content} of the finished turns
let controller = null;  // the running request's AbortController

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// Text with ``` fences -> nodes: fenced parts become <pre><code>, `inline` parts <code>, the rest text.
function render(el, text) {
  el.replaceChildren();
  el.dataset.text = text;  // the raw reply, markup included
  const parts = text.split("```");
  parts.forEach((part, i) => {
    if (i % 2 === 1) {  // inside a fence: drop the language tag line
      const nl = part.indexOf("\n");
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      code.textContent = nl >= 0 && /^[\w+-]*$/.test(part.slice(0, nl)) ? part.slice(nl + 1) : part;
      pre.appendChild(code);
      el.appendChild(pre);
      return;
    }
    part.split("`").forEach((piece, j) => {
      if (j % 2 === 1) {
        const code = document.createElement("code");
        code.textContent = piece;
        el.appendChild(code);
      } else if (piece) {
        el.appendChild(document.createTextNode(piece));
      }
    });
  });
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("div");
  body.className = "body";
  div.append(label, body);
  render(body, text);
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body.error && body.error.message) {
      const retry = response.headers.get("Retry-After");
      return `${response.status}: ${body.error.message}` + (retry ? ` (retry after ${retry}s)` : "");
    }
  } catch (e) { /* not JSON: fall through */ }
  return `${response.status} ${response.statusText}`;
}

async function loadModels() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    if (!r.ok) { showError(await errorMessage(r)); return; }
    const select = $("model");
    const current = select.value;
    select.replaceChildren();
    for (const m of (await r.json()).data) {
      const opt = document.createElement("option");
      opt.value = m.id;
      opt.textContent = m.parent ? `${m.id} (LoRA on ${m.parent})` : m.id;
      select.appendChild(opt);
    }
    if (current) select.value = current;
    select.disabled = select.options.length < 2;
    $("status").textContent = "connected";
    showError("");
  } catch (e) {
    $("status").textContent = "";
    showError("cannot reach the server: " + e.message);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

async function send(text) {
  showError("");
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const system = $("system").value.trim();
  const messages = (system ? [{ role: "system", content: system }] : []).concat(history);
  const div = addMessage("assistant", "");
  div.classList.add("streaming");
  const body = div.querySelector(".body");
  let answer = "";
  controller = new AbortController();
  setBusy(true);
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({
        model: $("model").value || undefined, messages, stream: true,
        temperature: parseFloat($("temperature").value), top_p: parseFloat($("top_p").value),
        max_tokens: parseInt($("max_tokens").value, 10),
      }),
    });
    if (!r.ok) throw new Error(await errorMessage(r));
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {  // one SSE event per blank-line-terminated block
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const c of chunk.choices) answer += c.delta.content || "";
        render(body, answer);
        $("messages").scrollTop = $("messages").scrollHeight;
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") showError(e.message.startsWith("Failed to fetch") ? "cannot reach the server" : e.message);
  } finally {
    div.classList.remove("streaming");
    if (answer) history.push({ role: "assistant", content: answer });
    controller = null;
    setBusy(false);
  }
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("clear").addEventListener("click", () => { history.length = 0; $("messages").replaceChildren(); showError(""); });
$("api_key").addEventListener("change", () => { localStorage.setItem("llmkit_api_key", $("api_key").value); loadModels(); });
$("api_key").value = localStorage.getItem("llmkit_api_key") || "";
loadModels();

// The playground: calls /v1 exactly as an OpenAI SDK would, with a key's secret (held in this page's
// memory only), streams the answer, then shows the request's receipt and ledger entry from GraphQL.
import { $, h, money, showError } from "./dom.js";
import { gql } from "./api.js";
import { PLAYGROUND_RECEIPT } from "./queries.js";

const status = (text) => ($("#pg-status").textContent = text);

async function loadModels() {
  const select = $("#pg-model");
  select.replaceChildren();
  select.disabled = true;
  $("#pg-send").disabled = true;
  const response = await fetch("/v1/models", { headers: { authorization: `Bearer ${$("#pg-secret").value.trim()}` } });
  const body = await response.json();
  if (!response.ok) {
    status(`${response.status} ${body.error?.code ?? ""}: ${body.error?.message ?? ""}`);
    return;
  }
  for (const model of body.data) select.append(h("option", { value: model.id }, model.id));
  select.disabled = body.data.length === 0;
  $("#pg-send").disabled = body.data.length === 0;
  status(`${body.data.length} model(s) this key may call`);
}

/** Reads an OpenAI chat-completions SSE stream, calling onDelta with each piece of content. */
async function readStream(body, onDelta) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (let end = buffer.search(/\r?\n\r?\n/); end >= 0; end = buffer.search(/\r?\n\r?\n/)) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      for (const line of event.split(/\r?\n/)) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) onDelta(delta);
      }
    }
  }
}

function showRecord(rows) {
  const table = $("#pg-receipt");
  table.tBodies[0].replaceChildren(...rows.map(([label, value, name]) => h("tr", {}, h("th", {}, label), h("td", { dataset: { field: name } }, value))));
  table.hidden = false;
}

async function showReceipt(requestId) {
  // The receipt is committed before the response's last byte; a short retry covers a slow replica.
  for (let attempt = 0; attempt < 10; attempt++) {
    const data = await gql(PLAYGROUND_RECEIPT, { requestId });
    const receipt = data.receipts.edges[0]?.node;
    const failed = data.failedRequests.edges[0]?.node;
    const ledger = (receipt ?? failed)?.ledgerEntry;
    const ledgerRow = ["Ledger entry", ledger ? `${ledger.kind} ${money(ledger.amount)}, balance after ${money(ledger.balanceAfter)} (${ledger.id})` : "none (nothing charged)", "ledger"];
    if (receipt) {
      showRecord([
        ["Request id", receipt.requestId, "requestId"],
        ["Charge", money(receipt.charge), "charge"],
        ["Bucket", receipt.bucket, "bucket"],
        ["Route", `${receipt.route.model} → ${receipt.upstreamModel}`, "route"],
        ["Channel", `${receipt.channel.name} (${receipt.channelRole.toLowerCase()})`, "channel"],
        ["Fallback", receipt.fallback ? `yes, after ${receipt.attempts} attempts` : "no", "fallback"],
        ["Tokens", `${receipt.promptTokens} prompt + ${receipt.completionTokens} completion`, "tokens"],
        ["Latency", `${receipt.latencyMs} ms`, "latency"],
        ledgerRow,
      ]);
      return;
    }
    if (failed) {
      showRecord([
        ["Request id", failed.requestId, "requestId"],
        ["Failed", `${failed.httpStatus} ${failed.cause}: ${failed.message}`, "cause"],
        ["Charge", money(failed.charge), "charge"],
        ["Tokens", `${failed.promptTokens} prompt + ${failed.completionTokens} completion`, "tokens"],
        ledgerRow,
      ]);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  status(`no receipt found for ${requestId}`);
}

async function send(event) {
  event.preventDefault();
  const output = $("#pg-output");
  output.textContent = "";
  $("#pg-receipt").hidden = true;
  $("#pg-send").disabled = true;
  status("streaming…");
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${$("#pg-secret").value.trim()}` },
      body: JSON.stringify({ model: $("#pg-model").value, stream: true, messages: [{ role: "user", content: $("#pg-prompt").value }] }),
    });
    const requestId = response.headers.get("x-request-id");
    if (!response.ok) {
      const body = await response.json();
      status(`${response.status} ${body.error?.code ?? ""}: ${body.error?.message ?? ""}`);
    } else {
      await readStream(response.body, (delta) => output.append(delta));
      status("done");
    }
    if (requestId) await showReceipt(requestId);
  } catch (error) {
    showError(String(error?.message ?? error));
    status("failed");
  } finally {
    $("#pg-send").disabled = false;
  }
}

export function setUpPlayground() {
  $("#pg-models").addEventListener("click", () => loadModels().catch((error) => status(String(error))));
  $("#playground").addEventListener("submit", send);
}

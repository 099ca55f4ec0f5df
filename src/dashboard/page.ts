// The live ops page: one static HTML document that talks to /graphql with the admin token the
// operator pastes (kept in this browser's localStorage only).
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tokengate · dashboard</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:24px;color:#111;background:#fafafa}
h1{font-size:20px;margin:0 0 12px}h2{font-size:15px;margin:20px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f0f0f0}.num{text-align:right;font-variant-numeric:tabular-nums}
#err{color:#b00}input{width:420px}
</style></head><body>
<h1>tokengate</h1>
<label>Admin token <input id="token" type="password" placeholder="tgadm_…"></label> <button id="save">Use</button>
<span id="err"></span>
<h2>Wallet</h2><table id="wallet"><thead><tr><th>Bucket</th><th class="num">Balance</th><th class="num">Held</th><th class="num">Available</th></tr></thead><tbody></tbody></table>
<h2>API keys</h2><table id="keys"><thead><tr><th>Key</th><th>Project</th><th>Status</th><th>Buckets</th><th class="num">Spend today</th><th class="num">Remaining today</th></tr></thead><tbody></tbody></table>
<h2>Routes</h2><table id="routes"><thead><tr><th>Model</th><th>Channel</th><th>Settlement</th><th>Upstream model</th><th>Health</th></tr></thead><tbody></tbody></table>
<h2>Latest receipts</h2><table id="receipts"><thead><tr><th>Time</th><th>Request</th><th>Model → upstream</th><th>Channel</th><th class="num">Tokens</th><th class="num">Charge</th><th class="num">Latency</th></tr></thead><tbody></tbody></table>
<script>
const Q=\`{ wallet { balances { bucket balance { amount currency } held { amount } available { amount } } }
 apiKeys(first: 50) { edges { node { name prefix last4 status allowedBuckets project { name }
   spendToday { amount currency } remainingToday { amount currency } } } }
 routes { model channels { name settlement upstreamModel health } }
 receipts(first: 20) { edges { node { createdAt requestId requestedModel upstreamModel channel { name } promptTokens completionTokens charge { amount currency } latencyMs } } } }\`;
const $=s=>document.querySelector(s);const esc=v=>String(v??'').replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
const rows=(sel,list)=>{$(sel+' tbody').innerHTML=list.map(r=>'<tr>'+r.map((c,i)=>'<td'+(typeof c==='object'&&c&&c.num?' class="num"':'')+'>'+esc(typeof c==='object'&&c?c.v:c)+'</td>').join('')+'</tr>').join('')};
const n=v=>({num:true,v});
// A token may arrive once in the URL fragment (never sent to the server): keep it, then drop it from the address bar.
if(location.hash.startsWith('#token=')){localStorage.setItem('tg-token',decodeURIComponent(location.hash.slice(7)));history.replaceState(null,'',location.pathname)}
$('#token').value=localStorage.getItem('tg-token')||'';
$('#save').onclick=()=>{localStorage.setItem('tg-token',$('#token').value);location.reload()};
async function load(){const t=localStorage.getItem('tg-token');if(!t)return;
 try{const r=await fetch('/graphql',{method:'POST',headers:{'content-type':'application/json',authorization:'Bearer '+t},body:JSON.stringify({query:Q})});
 const j=await r.json();if(j.errors){$('#err').textContent=j.errors[0].message;return}$('#err').textContent='';const d=j.data;
 rows('#wallet',d.wallet.balances.map(b=>[b.bucket,n(b.balance.amount+' '+b.balance.currency),n(b.held.amount),n(b.available.amount)]));
 rows('#keys',d.apiKeys.edges.map(({node:k})=>[k.name+' ('+k.prefix+'…'+k.last4+')',k.project.name,k.status,k.allowedBuckets.join(', '),n(k.spendToday.amount+' '+k.spendToday.currency),n(k.remainingToday?k.remainingToday.amount+' '+k.remainingToday.currency:'no cap')]));
 rows('#routes',d.routes.flatMap(r=>r.channels.map(c=>[r.model,c.name,c.settlement,c.upstreamModel,c.health])));
 rows('#receipts',d.receipts.edges.map(({node:x})=>[x.createdAt,x.requestId,x.requestedModel+' → '+x.upstreamModel,x.channel.name,n(x.promptTokens+'+'+x.completionTokens),n(x.charge.amount+' '+x.charge.currency),n(x.latencyMs+' ms')]));
 }catch(e){$('#err').textContent=String(e)}}
// Live: refresh on every new receipt, spend event and route-health change (SSE subscriptions),
// with a slow poll as a fallback.
async function live(query){const t=localStorage.getItem('tg-token');if(!t)return;
 try{const r=await fetch('/graphql',{method:'POST',headers:{'content-type':'application/json',accept:'text/event-stream',authorization:'Bearer '+t},body:JSON.stringify({query})});
 const reader=r.body.getReader();const dec=new TextDecoder();let buf='';
 for(;;){const {value,done}=await reader.read();if(done)break;buf+=dec.decode(value,{stream:true});
  let i;while((i=buf.indexOf('\\n\\n'))>=0){const chunk=buf.slice(0,i);buf=buf.slice(i+2);if(chunk.includes('event: next'))load();}}
 }catch(e){}
 setTimeout(()=>live(query),5000);}
load();setInterval(load,30000);
live('subscription { receiptCreated { id } }');
live('subscription { routeHealth { channelId state } }');
</script></body></html>`;

// Boots Yoga's GraphiQL from tokengate's own assets. Runs before the GraphiQL bundle (Monaco reads
// MonacoEnvironment when it loads) and renders once the page has loaded.
(() => {
  const TOKEN_KEY = "tokengate.adminToken"; // shared with /dashboard, this tab only
  const boot = JSON.parse(document.getElementById("graphiql-boot").textContent);
  // Same-origin workers: no blob indirection needed (Yoga's page needs it for its CDN).
  self.MonacoEnvironment = { globalAPI: false, getWorkerUrl: (_moduleId, label) => boot.workers[label] ?? boot.workers.editorWorkerService };

  function render(token) {
    const root = document.getElementById("root");
    root.replaceChildren();
    const headers = token ? JSON.stringify({ Authorization: `Bearer ${token}` }, null, 2) : boot.options.headers;
    // Headers stay out of localStorage: the token lives in this tab's sessionStorage only.
    // Yoga's GraphiQL opens with `query` (after ?query= in the address); defaultQuery is GraphiQL's name for it.
    YogaGraphiQL.renderYogaGraphiQL(root, { ...boot.options, query: boot.options.defaultQuery, headers, shouldPersistHeaders: false });
  }

  function askForToken() {
    const root = document.getElementById("root");
    const form = document.createElement("form");
    form.className = "token-form";
    const label = document.createElement("label");
    label.textContent = "Admin token ";
    const input = document.createElement("input");
    input.type = "password";
    input.name = "token";
    input.autocomplete = "off";
    input.placeholder = "tgadm_…";
    label.append(input);
    const use = document.createElement("button");
    use.type = "submit";
    use.textContent = "Open GraphiQL";
    const skip = document.createElement("button");
    skip.type = "button";
    skip.textContent = "Without a token";
    const note = document.createElement("p");
    note.textContent = "Kept in this tab's session storage and sent as the Authorization header; edit it later in the Headers tab.";
    form.append(label, use, skip, note);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      render(token);
    });
    skip.addEventListener("click", () => render(""));
    root.replaceChildren(form);
    input.focus();
  }

  window.addEventListener("DOMContentLoaded", () => {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) render(token);
    else askForToken();
  });
})();

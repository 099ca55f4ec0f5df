// The admin API from the browser: GraphQL over HTTP for queries and mutations, graphql-ws
// (served from node_modules/graphql-ws/umd) for live subscriptions. The token is entered once and
// kept in this tab's sessionStorage.
const TOKEN_KEY = "tokengate.adminToken";

/** A token may arrive once in the URL fragment (never sent to the server): keep it, drop it from the address bar. */
export function adoptFragmentToken() {
  if (!location.hash.startsWith("#token=")) return;
  setToken(decodeURIComponent(location.hash.slice("#token=".length)));
  history.replaceState(null, "", location.pathname);
}

export const getToken = () => sessionStorage.getItem(TOKEN_KEY) ?? "";
export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class GraphQLRequestError extends Error {
  constructor(errors) {
    super(errors.map((e) => e.message).join("; "));
    this.code = errors[0]?.extensions?.code;
  }
}

/**
 * A query or mutation over HTTP; its data typed by the document (queries.js, typed in queries.d.ts).
 * @template TResult, TVariables
 * @param {import("../operations.ts").TypedDocument<TResult, TVariables>} query
 * @param {TVariables} [variables]
 * @returns {Promise<TResult>}
 */
export async function gql(query, variables) {
  const response = await fetch("/graphql", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${getToken()}` },
    body: JSON.stringify({ query, variables: variables ?? {} }),
  });
  const body = await response.json();
  if (body.errors?.length) throw new GraphQLRequestError(body.errors);
  return body.data;
}

let client = null;

/** One websocket for every subscription of the page; reconnects with backoff. */
export function liveClient(onState) {
  client ??= graphqlWs.createClient({
    url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/graphql`,
    connectionParams: () => ({ authorization: `Bearer ${getToken()}` }),
    lazy: false,
    keepAlive: 15_000,
    retryAttempts: Infinity,
    shouldRetry: () => true,
    on: {
      connected: () => onState("live"),
      closed: () => onState("offline"),
      connecting: () => onState("connecting"),
    },
  });
  return client;
}

/**
 * Subscribes and calls onData with each event's data; returns the unsubscribe function.
 * @template TResult, TVariables
 * @param {import("../operations.ts").TypedDocument<TResult, TVariables>} query
 * @param {TVariables} variables
 * @param {(data: TResult) => void} onData
 * @param {(error: unknown) => void} [onError]
 * @returns {() => void}
 */
export function subscribe(query, variables, onData, onError = console.warn) {
  return liveClient(() => {}).subscribe(
    { query, variables },
    {
      next: (result) => {
        if (result.errors?.length) onError(new GraphQLRequestError(result.errors));
        else {
          try {
            onData(/** @type {TResult} */ (result.data));
          } catch (error) {
            // A bug of the page, not of the stream: loud, so it is seen (and the tests fail on it).
            console.error(error);
          }
        }
      },
      error: (error) => onError(error),
      complete: () => {},
    },
  );
}

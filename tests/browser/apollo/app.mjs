// The test page: Apollo Client from npm (ES modules through an import map) and
// clients/apollo-cascade.mjs. Four watched queries; window.app drives it.
import { ApolloClient, HttpLink, InMemoryCache, gql } from "@apollo/client";
import { applyMutationResult, subscribeCascades } from "/app/clients/apollo-cascade.mjs";

const cfg = JSON.parse(new URLSearchParams(location.search).get("cfg"));
document.getElementById("tab").textContent = cfg.tab;

let inflight = 0;
const link = new HttpLink({
  uri: "/graphql",
  fetch: (uri, options) => {
    inflight += 1;
    return fetch(uri, options).finally(() => { inflight -= 1; });
  },
});
const cache = new InMemoryCache({
  typePolicies: {
    // the cascade's own objects are not entities
    UpdatedEntity: { keyFields: false },
    DeletedEntity: { keyFields: false },
    QueryInvalidation: { keyFields: false },
    TypeInvalidation: { keyFields: false },
  },
});
const client = new ApolloClient({ link, cache });

const QUERIES = {
  users: [gql`query UsersList { users(limit: 5) { id name email } }`, {}],
  post: [gql`query PostDetail($id: ID!) { post(id: $id) { id title body author { id name } } }`, { id: cfg.postId }],
  victimPosts: [gql`query VictimPosts($authorId: ID!) { posts(authorId: $authorId, limit: 10) { id title } }`,
                { authorId: cfg.victim }],
  other: [gql`query OtherUser($id: ID!) { user(id: $id) { id name } }`, { id: cfg.other }],
};

const state = {};
const loaded = new Set();
for (const [name, [query, variables]] of Object.entries(QUERIES)) {
  client.watchQuery({ query, variables }).subscribe({
    next(result) {
      if (result.data === undefined || result.loading) return;
      state[name] = result.data;
      loaded.add(name);
      document.getElementById(name).textContent = JSON.stringify(result.data, null, 1);
    },
    error(err) { document.getElementById(name).textContent = `error: ${err}`; },
  });
}

const applied = [];  // {at, source, tx, updated: [typename:id], deleted, invalidated, titles}
function record(source, cascade, done) {
  const entry = {
    at: performance.timeOrigin + performance.now(),
    source,
    tx: cascade && cascade.metadata ? cascade.metadata.transactionId : null,
    updated: (cascade.updated || []).map((e) => `${e.typename ?? e.typeName ?? e.__typename}:${e.id}`),
    deleted: (cascade.deleted || []).map((e) => `${e.typename ?? e.typeName ?? e.__typename}:${e.id}`),
    invalidations: cascade.invalidations || [],
    typeInvalidations: cascade.typeInvalidations || [],
    invalidated: done.invalidated,
    titles: (cascade.updated || []).map((e) => e.entity && e.entity.title).filter(Boolean),
  };
  applied.push(entry);
  const log = document.getElementById("log");
  log.textContent = applied.slice(-6).map((a) => `${a.source} tx ${a.tx}: updated ${a.updated.length}, deleted ${a.deleted.length}, evicted root fields [${a.invalidated.join(", ")}]`).join("\n");
}

let push = null;
let subscribed = false;
if (cfg.push) {
  push = subscribeCascades(client, {
    url: `ws://${location.host}/graphql/ws`,
    onCascade: (cascade, done) => record("push", cascade, done),
    onStatus: (s, detail) => {
      if (s === "subscribed") subscribed = true;
      document.getElementById("status").textContent = detail ? `${s} ${JSON.stringify(detail)}` : s;
    },
  });
}

const CASCADE = cfg.cascadeSelection;
const DELETE_USER = gql(`mutation DeleteUser($id: ID!) { deleteUser(input: {id: $id}) { success cascade ${CASCADE} } }`);
const UPDATE_POST = gql(`mutation UpdatePost($id: ID!, $title: String!) {
  updatePost(input: {id: $id, title: $title}) { success data { id title } cascade ${CASCADE} } }`);

async function mutate(mutation, variables) {
  const result = await client.mutate({ mutation, variables });
  const at = performance.timeOrigin + performance.now();
  for (const [i, done] of applyMutationResult(client, result).entries()) {
    record("response", Object.values(result.data)[i].cascade, done);
  }
  return { at, data: result.data };
}

window.app = {
  ready: () => loaded.size === Object.keys(QUERIES).length && inflight === 0,
  subscribed: () => subscribed,
  idle: () => inflight === 0,
  state: () => JSON.parse(JSON.stringify(state)),
  applied: () => applied,
  deleteUser: (id) => mutate(DELETE_USER, { id }),
  updatePost: (id, title) => mutate(UPDATE_POST, { id, title }),
};
document.getElementById("status").textContent = "running";

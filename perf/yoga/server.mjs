// The server a Node team would run instead of fraiseshm, for perf/run.py:
// GraphQL Yoga 5 with its response cache (@envelop/response-cache) over the
// same blog views, data and mutation function as fraiseshm.
//
//   node server.mjs            env: PORT, DATABASE_URL, YOGA_WORKERS (0 = one process),
//                              YOGA_REDIS_URL (set: every worker shares one Redis cache)
//
// What the response cache does, as its documentation says: a result is cached
// by document + variables; every entity in it (__typename + id, added to the
// selection by the plugin) is recorded; a mutation's result invalidates every
// cached result holding one of the entities it returns. The in-memory cache is
// per process, so under node:cluster a mutation on one worker leaves the other
// worker's copy in place: perf counts those stale reads.
//
// X-Cache: HIT | MISS is set from the plugin's extension metadata (then
// removed from the body), so the scenarios count hits exactly as for fraiseshm.
import cluster from "node:cluster";
import { createServer } from "node:http";
import { createSchema, createYoga } from "graphql-yoga";
import { createInMemoryCache, useResponseCache } from "@graphql-yoga/plugin-response-cache";
import pg from "pg";

const PORT = Number(process.env.PORT || 4000);
const WORKERS = Number(process.env.YOGA_WORKERS || 0);
const REDIS_URL = process.env.YOGA_REDIS_URL || "";
// The in-memory cache's default is 1,000 entries: too few for 10k users x 2 documents, and
// not what a team would keep after its first load test. Sized like local-lru's 10,000+.
const CACHE_MAX = Number(process.env.YOGA_CACHE_MAX || 20000);

if (WORKERS > 0 && cluster.isPrimary) {
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  let stopping = false;
  cluster.on("exit", (worker, code) => {
    if (stopping) return;
    console.error(`yoga worker ${worker.process.pid} exited (${code})`);
    process.exit(1); // a benchmark with a dead worker measures nothing: fail loudly
  });
  process.on("SIGTERM", () => {
    stopping = true;
    for (const worker of Object.values(cluster.workers)) worker.process.kill("SIGTERM");
    process.exit(0);
  });
} else {
  await serve();
}

async function serve() {
  const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 10 });

  const typeDefs = /* GraphQL */ `
    type User { id: ID! name: String! email: String! }
    type Post { id: ID! title: String! author: User! }
    type UserResponse { success: Boolean! data: User }
    input UpdateUserInput { id: ID! name: String email: String }
    type Query {
      user(id: ID!): User
      posts(authorId: ID, limit: Int = 20, offset: Int = 0): [Post!]!
    }
    type Mutation { updateUser(input: UpdateUserInput!): UserResponse! }
  `;

  const resolvers = {
    Query: {
      user: async (_, { id }) => {
        const r = await pool.query("SELECT data FROM v_user WHERE id = $1", [id]);
        return r.rows[0]?.data ?? null;
      },
      posts: async (_, { authorId, limit, offset }) => {
        const r = await pool.query(
          "SELECT data FROM v_post WHERE ($1::uuid IS NULL OR author_id = $1) ORDER BY created_at, id LIMIT $2 OFFSET $3",
          [authorId ?? null, Math.min(limit, 100), offset],
        );
        return r.rows.map((row) => row.data);
      },
    },
    Mutation: {
      updateUser: async (_, { input }) => {
        const r = await pool.query("SELECT fn_update_user($1::jsonb) AS result", [JSON.stringify(input)]);
        const result = r.rows[0].result;
        return { success: result.success === true, data: result.data ?? null };
      },
    },
  };

  let cache = createInMemoryCache({ max: CACHE_MAX });
  if (REDIS_URL) {
    const { default: Redis } = await import("ioredis");
    const { createRedisCache } = await import("@envelop/response-cache-redis");
    cache = createRedisCache({ redis: new Redis(REDIS_URL) });
  }

  const hits = new WeakMap(); // request -> "HIT" | "MISS"
  const xCache = {
    onResultProcess({ request, result, setResult }) {
      const meta = result?.extensions?.responseCache;
      if (!meta) return;
      if ("hit" in meta) hits.set(request, meta.hit ? "HIT" : "MISS");
      const { responseCache: _drop, ...rest } = result.extensions;
      setResult({ ...result, extensions: Object.keys(rest).length ? rest : undefined });
    },
    onResponse({ request, response }) {
      const state = hits.get(request);
      if (state) response.headers.set("X-Cache", state);
    },
  };

  const yoga = createYoga({
    schema: createSchema({ typeDefs, resolvers }),
    graphqlEndpoint: "/graphql",
    graphiql: false,
    logging: "warn",
    plugins: [
      useResponseCache({
        session: () => null, // one cache for every client, like fraiseshm's public entries
        ttl: 86_400_000, // the blog's @cache(ttl: 86400)
        includeExtensionMetadata: true,
        cache,
      }),
      xCache,
    ],
  });

  const server = createServer((req, res) => {
    if (req.url === "/health") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end('{"status":"ok"}');
      return;
    }
    yoga(req, res);
  });
  server.keepAliveTimeout = 5000;
  server.listen(PORT, "127.0.0.1");
}

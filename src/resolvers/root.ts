// Root types. Every Query and Subscription field needs an authenticated admin token; every
// Mutation an admin (platform or organization) token. Finer checks live in the domain.
import { builder } from "../schema/builder.ts";

builder.queryType({ authScopes: { authenticated: true } });
builder.mutationType({ authScopes: { admin: true } });

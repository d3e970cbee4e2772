// The same endpoint as the Python app's GET /api/avatars: verify the access JWT (HS256),
// check the user's token version, one page query with the total, signed thumbnail URLs.
const crypto = require("node:crypto");
const express = require("express");
const jwt = require("jsonwebtoken");
const { Pool } = require("pg");

const secretText = process.env.JWT_SECRET;
const secret = crypto.createSecretKey(Buffer.from(secretText, "utf8")); // a KeyObject: parsed once
const fileKey = crypto.createHmac("sha256", secretText).update("lustify-files").digest();
const baseUrl = process.env.PUBLIC_URL || `http://localhost:${process.env.PORT}`;
const ttl = 3600;
const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: Number(process.env.DB_POOL_SIZE || 20) });

const USER_SQL = "SELECT id, email, display_name, email_verified, token_version, created_at, is_active FROM users WHERE id = $1";
const PAGE_SQL = `SELECT CAST(avatars.id AS TEXT) AS id, avatars.name, avatars.description, avatars.age,
  avatars.appearance, avatars.personality, avatars.style, avatars.profile, avatars.seed, avatars.status,
  avatars.error, avatars.thumbnail_key,
  (SELECT count(*) FROM generated_content WHERE generated_content.avatar_id = avatars.id) AS content_count,
  avatars.created_at, avatars.updated_at, count(*) OVER () AS total
FROM avatars WHERE avatars.user_id = $1
ORDER BY avatars.created_at DESC, avatars.id DESC LIMIT $2 OFFSET $3`;

function fail(res, status, error, message) {
  res.status(status).json({ error, message, details: [] });
}

function signedUrl(key) {
  const expires = Math.floor(Date.now() / 1000) + ttl;
  const sig = crypto.createHmac("sha256", fileKey).update(`${key}\n${expires}`).digest("hex");
  return `${baseUrl}/files/${encodeURI(key)}?expires=${expires}&sig=${sig}`;
}

const app = express();
app.disable("x-powered-by");

app.get("/api/avatars", async (req, res) => {
  const [scheme, token] = (req.get("authorization") || "").split(" ");
  if (scheme !== "Bearer" || !token) return fail(res, 401, "unauthorized", "Authentication required");
  let claims;
  try {
    claims = jwt.verify(token, secret, { algorithms: ["HS256"] });
  } catch (e) {
    return fail(res, 401, "unauthorized", "The access token is invalid");
  }
  if (claims.typ !== "access") return fail(res, 401, "unauthorized", "The access token is invalid");
  const page = Number(req.query.page || 1);
  const limit = Number(req.query.limit || 20);
  if (!Number.isInteger(page) || page < 1 || !Number.isInteger(limit) || limit < 1 || limit > 100) {
    return fail(res, 400, "validation_error", "The request is invalid");
  }
  try {
    const user = (await pool.query(USER_SQL, [claims.sub])).rows[0];
    if (!user || !user.is_active) return fail(res, 401, "unauthorized", "The access token is invalid");
    if (user.token_version !== claims.ver) return fail(res, 401, "token_revoked", "Sign in again");
    const rows = (await pool.query(PAGE_SQL, [user.id, limit, (page - 1) * limit])).rows;
    const items = rows.map((r) => ({
      id: r.id, name: r.name, description: r.description, age: r.age, appearance: r.appearance,
      personality: r.personality, style: r.style, profile: r.profile, seed: Number(r.seed),
      status: r.status, error: r.error, thumbnail_url: r.thumbnail_key ? signedUrl(r.thumbnail_key) : null,
      content_count: Number(r.content_count), created_at: r.created_at, updated_at: r.updated_at,
    }));
    res.json({ items, total: rows.length ? Number(rows[0].total) : 0, page, limit });
  } catch (e) {
    fail(res, 500, "internal_error", "Internal server error");
  }
});

app.listen(Number(process.env.PORT), "127.0.0.1", () => console.log(`express peer on ${process.env.PORT}`));

'use strict';

// The Node side of coatcheck's express-session interop test: a plain Express app using
// express-session with one of the stock stores (connect-redis, connect-pg-simple, connect-mongo,
// express-mysql-session, better-sqlite3-session-store).
// Configured entirely through environment variables; see README.md.

const express = require('express');
const session = require('express-session');

function env(name, fallback) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    if (fallback === undefined) fail(`environment variable ${name} is required`);
    return fallback;
  }
  return value;
}

function fail(message) {
  console.error(`express-app: ${message}`);
  process.exit(1);
}

// Builds the store. Returns { store, ready: Promise, close: async () => void }.
function makeStore(kind) {
  switch (kind) {
    case 'redis': {
      const { createClient } = require('redis');
      const { RedisStore } = require('connect-redis');
      // node-redis retries forever by default, so an unreachable server would hang the start-up;
      // give up after a few seconds until the first connection has succeeded.
      let connectedOnce = false;
      const client = createClient({
        url: env('REDIS_URL'),
        socket: {
          reconnectStrategy: (retries, cause) =>
            !connectedOnce && retries >= 12 ? cause : Math.min(50 * (retries + 1), 1000),
        },
      });
      client.on('error', (err) => console.error('express-app: redis client error:', err.message));
      const store = new RedisStore({ client, prefix: env('REDIS_PREFIX', 'sess:') });
      return {
        store,
        ready: client.connect().then(() => {
          connectedOnce = true;
        }),
        close: async () => {
          if (client.isOpen) await client.close();
        },
      };
    }
    case 'postgres': {
      const { Pool } = require('pg');
      const PgStore = require('connect-pg-simple')(session);
      const pool = new Pool({ connectionString: env('DATABASE_URL') });
      pool.on('error', (err) => console.error('express-app: pg pool error:', err));
      const store = new PgStore({
        pool,
        tableName: env('PG_TABLE', 'session'),
        createTableIfMissing: true,
        pruneSessionInterval: false,
      });
      // connect-pg-simple creates its table lazily, before its first query. Run one harmless
      // read now so that the table exists (and the connection works) before we say "listening".
      const ready = new Promise((resolve, reject) => {
        store.get('coatcheck-startup-probe', (err) => (err ? reject(err) : resolve()));
      });
      return {
        store,
        ready,
        close: async () => {
          await store.close();
          await pool.end();
        },
      };
    }
    case 'mongo': {
      const { MongoStore } = require('connect-mongo');
      const store = MongoStore.create({
        mongoUrl: env('MONGODB_URL'),
        dbName: env('MONGO_DB', 'coatcheck_interop'),
        collectionName: env('MONGO_COLLECTION', 'sessions'),
        stringify: true,
        autoRemove: 'native',
      });
      // collectionP resolves once connected and the TTL index exists; awaiting it here also
      // keeps a connection failure from becoming an unhandled rejection.
      return {
        store,
        ready: store.collectionP,
        close: async () => {
          await store.close();
        },
      };
    }
    case 'mysql': {
      // express-mysql-session 3 on a mysql2 pool; it creates its `sessions` table (if
      // missing) before it is ready.
      const mysql = require('mysql2/promise');
      const MySQLStore = require('express-mysql-session')(session);
      const pool = mysql.createPool(env('MYSQL_URL'));
      const store = new MySQLStore(
        {
          createDatabaseTable: true,
          clearExpired: false,
          schema: { tableName: env('MYSQL_TABLE', 'sessions') },
        },
        pool,
      );
      return {
        store,
        ready: store.onReady(),
        close: async () => {
          await store.close();
          await pool.end();
        },
      };
    }
    case 'sqlite': {
      // better-sqlite3-session-store on a better-sqlite3 database (its table is always
      // `sessions`); WAL and a busy timeout, as coatcheck opens the same file.
      const Database = require('better-sqlite3');
      const SqliteStore = require('better-sqlite3-session-store')(session);
      const db = new Database(env('SQLITE_FILE'));
      db.pragma('journal_mode = WAL');
      db.pragma('busy_timeout = 5000');
      const store = new SqliteStore({ client: db });
      return {
        store,
        ready: Promise.resolve(),
        close: async () => {
          db.close();
        },
      };
    }
    default:
      return fail(
        `STORE must be redis, postgres, mongo, mysql or sqlite, got ${JSON.stringify(kind)}`,
      );
  }
}

async function main() {
  const port = Number(env('PORT'));
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail('PORT must be a port number');

  const secrets = env('SESSION_SECRETS')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  if (secrets.length === 0) fail('SESSION_SECRETS must name at least one secret');

  const { store, ready, close } = makeStore(env('STORE'));
  await ready;

  const app = express();
  app.disable('x-powered-by');
  app.use(
    session({
      name: 'connect.sid',
      secret: secrets, // the first signs, all verify
      store,
      resave: false,
      saveUninitialized: false,
      cookie: { maxAge: 3600000, httpOnly: true, secure: false, sameSite: 'lax', path: '/' },
    }),
  );

  const str = (v) => (typeof v === 'string' ? v : v === undefined ? undefined : String(v));

  app.post('/login', (req, res, next) => {
    const user = str(req.query.user);
    if (!user) return res.status(400).json({ error: 'missing user' });
    req.session.regenerate((err) => {
      if (err) return next(err);
      req.session.userId = user;
      req.session.loginSide = 'node';
      req.session.save((err2) => {
        if (err2) return next(err2);
        res.json({ userId: user });
      });
    });
  });

  app.get('/me', (req, res) => {
    const s = req.session;
    if (!s.userId) return res.status(401).json({ error: 'not logged in' });
    res.json({
      userId: s.userId,
      counter: s.counter ?? null,
      note: s.note ?? null,
      loginSide: s.loginSide ?? null,
    });
  });

  app.post('/counter', (req, res) => {
    req.session.counter = (req.session.counter || 0) + 1;
    res.json({ counter: req.session.counter });
  });

  app.post('/note', (req, res) => {
    const text = str(req.query.text) ?? '';
    req.session.note = text;
    res.json({ note: text });
  });

  app.get('/session', (req, res) => {
    const data = {};
    for (const key of Object.keys(req.session)) {
      if (key !== 'cookie') data[key] = req.session[key];
    }
    res.json({ id: req.sessionID, data });
  });

  app.post('/logout', (req, res, next) => {
    req.session.destroy((err) => {
      if (err) return next(err);
      res.clearCookie('connect.sid', { path: '/' });
      res.json({ ok: true });
    });
  });

  // eslint-disable-next-line no-unused-vars
  app.use((err, req, res, next) => {
    console.error('express-app: request error:', err);
    if (res.headersSent) return;
    res.status(500).json({ error: String(err) });
  });

  const server = app.listen(port, '127.0.0.1', () => {
    console.log(`listening ${server.address().port}`);
  });
  server.on('error', (err) => {
    console.error('express-app: server error:', err);
    process.exit(1);
  });

  let stopping = false;
  const shutdown = async (signal) => {
    if (stopping) return;
    stopping = true;
    console.error(`express-app: ${signal}, shutting down`);
    const closed = new Promise((resolve) => server.close(() => resolve()));
    server.closeAllConnections();
    try {
      await closed;
      await close();
    } catch (err) {
      console.error('express-app: error while shutting down:', err);
    }
    process.exit(0);
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

main().catch((err) => {
  console.error('express-app: startup failed:', err);
  process.exit(1);
});

//! Connections: how the synchronous store drives tokio-postgres, and a statement cache per connection.

use std::collections::HashMap;

use chat_log::StoreError;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Client, GenericClient, Row, Statement};

/// Turns tokio-postgres's errors into the contract's.
pub(super) trait Db<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T> Db<T> for Result<T, tokio_postgres::Error> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Database(Box::new(e)))
    }
}

/// One connection with the statements prepared on it. Preparing costs a round trip of its own: a statement
/// run by text would cost two round trips each time instead of one.
pub(super) struct PgConn {
    pub(super) client: Client,
    pub(super) stmts: HashMap<String, Statement>,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("closed", &self.client.is_closed())
            .field("statements", &self.stmts.len())
            .finish()
    }
}

pub(super) type Params<'p> = [&'p (dyn ToSql + Sync)];

/// Statements run on a client or a transaction, each prepared once per connection.
pub(super) struct Q<'a, C> {
    pub(super) c: &'a C,
    stmts: &'a mut HashMap<String, Statement>,
}

impl<'a, C: GenericClient + Sync> Q<'a, C> {
    pub(super) fn new(c: &'a C, stmts: &'a mut HashMap<String, Statement>) -> Self {
        Self { c, stmts }
    }

    pub(super) async fn stmt(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.c.prepare(sql).await.db()?;
        self.stmts.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    /// Runs a statement and returns how many rows it changed.
    pub(super) async fn exec(&mut self, sql: &str, p: &Params<'_>) -> Result<u64, StoreError> {
        let s = self.stmt(sql).await?;
        self.c.execute(&s, p).await.db()
    }

    pub(super) async fn query(
        &mut self,
        sql: &str,
        p: &Params<'_>,
    ) -> Result<Vec<Row>, StoreError> {
        let s = self.stmt(sql).await?;
        self.c.query(&s, p).await.db()
    }

    pub(super) async fn opt(
        &mut self,
        sql: &str,
        p: &Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        let s = self.stmt(sql).await?;
        self.c.query_opt(&s, p).await.db()
    }

    pub(super) async fn one(&mut self, sql: &str, p: &Params<'_>) -> Result<Row, StoreError> {
        let s = self.stmt(sql).await?;
        self.c.query_one(&s, p).await.db()
    }
}

/// A column of a row, with a type mismatch as an error rather than tokio-postgres's panic.
pub(super) fn col<'r, T: FromSql<'r>>(r: &'r Row, i: usize) -> Result<T, StoreError> {
    r.try_get(i).db()
}

//! Express mode's `migrate()`: bringing a table express-mysql-session created (or an
//! earlier build of this store upgraded) up to what coatcheck needs, one addition at a time,
//! safe with several instances migrating at once.

use super::{error_number, Inner};
use crate::layout::express::{is_current_user_column, reads_key, ExpressStatements};
use crate::MigrateError;

impl Inner {
    /// A table express-mysql-session created first lacks coatcheck's additions: each is
    /// added if missing (another instance adding it meanwhile is fine). A principal column
    /// an earlier build added (a padded `VARCHAR`, or an expression that fails writes on
    /// JSON the server cannot parse) is rebuilt; one reading another key than the
    /// configured one is refused, not silently kept.
    pub(super) async fn express_additions(
        &self,
        x: &ExpressStatements,
    ) -> Result<(), MigrateError> {
        if !x.user_path.is_empty() {
            self.express_user_column(x).await?;
        }
        let (db, table) = (self.database.as_deref(), self.table.as_str());
        let found: i64 = sqlx::query_scalar(&x.expires_index)
            .bind(db)
            .bind(table)
            .fetch_one(&self.pool)
            .await
            .map_err(MigrateError::Database)?;
        if found == 0 {
            self.add_ignoring_races(&x.add_expires).await?;
        }
        Ok(())
    }

    /// The principal column as it is in the table: `(generation expression, column type)`.
    async fn found_user_column(
        &self,
        x: &ExpressStatements,
    ) -> Result<Option<(String, String)>, MigrateError> {
        let row: Option<(Option<String>, String)> = sqlx::query_as(&x.user_column)
            .bind(self.database.as_deref())
            .bind(self.table.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(MigrateError::Database)?;
        Ok(row.map(|(expr, ty)| (expr.unwrap_or_default(), ty)))
    }

    /// Adds the principal column, keeps it, rebuilds an earlier build's, or refuses one
    /// reading another key.
    async fn express_user_column(&self, x: &ExpressStatements) -> Result<(), MigrateError> {
        let Some((expr, ty)) = self.found_user_column(x).await? else {
            return self.add_ignoring_races(&x.add_user).await;
        };
        if is_current_user_column(&expr, &ty, &x.user_path) {
            return Ok(());
        }
        if !reads_key(&expr, &x.user_path) {
            return Err(MigrateError::WrongShape {
                table: self.qualified_name.clone(),
                source: sqlx::Error::Configuration(
                    format!(
                        "its coatcheck_user column is `{expr}`, not a read of {}: the \
                         principal key changed; drop the column (ALTER TABLE … DROP \
                         COLUMN coatcheck_user) and migrate again",
                        x.user_path
                    )
                    .into(),
                ),
            });
        }
        tracing::info!(
            table = %self.qualified_name, column_type = %ty,
            "rebuilding an earlier build's coatcheck_user column"
        );
        match sqlx::raw_sql(&x.rebuild_user).execute(&self.pool).await {
            Ok(_) => Ok(()),
            // Another instance rebuilt it meanwhile: its key or column is gone, or the new
            // one is there already.
            Err(e) => match self.found_user_column(x).await? {
                Some((expr, ty)) if is_current_user_column(&expr, &ty, &x.user_path) => Ok(()),
                _ => Err(MigrateError::Database(e)),
            },
        }
    }

    /// An `ALTER TABLE … ADD`; another instance having added the same meanwhile
    /// (duplicate column or key name) is success.
    async fn add_ignoring_races(&self, sql: &str) -> Result<(), MigrateError> {
        match sqlx::raw_sql(sql).execute(&self.pool).await {
            Err(e) if matches!(error_number(&e), Some(1060 | 1061)) => Ok(()),
            other => other.map(drop).map_err(MigrateError::Database),
        }
    }
}

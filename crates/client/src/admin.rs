//! The admin routes (role `admin`; anyone else gets 403 `FORBIDDEN`).

use confab_domain::UserId;
use reqwest::Method;
use serde_json::json;

use crate::{Allowance, Call, Client, Error, OwnAllowance, Page, UsageReport, User, json};

impl Client {
    /// A page of every account, oldest first.
    ///
    /// ```no_run
    /// # async fn demo(admin: confab_client::Client) -> Result<(), confab_client::Error> {
    /// let users = admin.admin_users(0, 50).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`] 403 `FORBIDDEN` for a caller who is not an admin, 422
    /// for a window out of range.
    pub async fn admin_users(&self, offset: u32, limit: u32) -> Result<Page<User>, Error> {
        let mut url = self.url("api/v1/admin/users")?;
        url.query_pairs_mut()
            .append_pair("offset", &offset.to_string())
            .append_pair("limit", &limit.to_string());
        json(self.authorized(&Call::new(Method::GET, url)).await?).await
    }

    /// Disables (`true`) or enables an account. Disabling ends its sessions
    /// at once.
    ///
    /// ```no_run
    /// # async fn demo(admin: confab_client::Client, user: confab_domain::UserId)
    /// # -> Result<(), confab_client::Error> {
    /// admin.admin_set_disabled(user, true).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`] 403, 404 for an unknown user.
    pub async fn admin_set_disabled(&self, user: UserId, disabled: bool) -> Result<User, Error> {
        let call = Call::new(
            Method::PATCH,
            self.url(&format!("api/v1/admin/users/{user}"))?,
        )
        .json(json!({ "disabled": disabled }));
        json(self.authorized(&call).await?).await
    }

    /// Deletes an account and everything of it.
    ///
    /// ```no_run
    /// # async fn demo(admin: confab_client::Client, user: confab_domain::UserId)
    /// # -> Result<(), confab_client::Error> {
    /// admin.admin_delete_user(user).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`] 403, 422 for the admin's own account, 503 part-way
    /// (repeat it).
    pub async fn admin_delete_user(&self, user: UserId) -> Result<(), Error> {
        let call = Call::new(
            Method::DELETE,
            self.url(&format!("api/v1/admin/users/{user}"))?,
        );
        self.authorized(&call).await.map(|_| ())
    }

    /// A user's tokens of the last 30 days.
    ///
    /// ```no_run
    /// # async fn demo(admin: confab_client::Client, user: confab_domain::UserId)
    /// # -> Result<(), confab_client::Error> {
    /// let report = admin.admin_user_usage(user).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`] 403, 404 for an unknown user.
    pub async fn admin_user_usage(&self, user: UserId) -> Result<UsageReport, Error> {
        let url = self.url(&format!("api/v1/admin/users/{user}/usage"))?;
        json(self.authorized(&Call::new(Method::GET, url)).await?).await
    }

    /// Everyone's tokens of the last 30 days, summed per day and model.
    ///
    /// ```no_run
    /// # async fn demo(admin: confab_client::Client) -> Result<(), confab_client::Error> {
    /// let report = admin.admin_usage().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`] 403.
    pub async fn admin_usage(&self) -> Result<UsageReport, Error> {
        let url = self.url("api/v1/admin/usage")?;
        json(self.authorized(&Call::new(Method::GET, url)).await?).await
    }

    /// Sets a user's own token allowances; returns their allowances now.
    ///
    /// ```no_run
    /// # async fn demo(admin: confab_client::Client, user: confab_domain::UserId)
    /// # -> Result<(), confab_client::Error> {
    /// let own = confab_client::OwnAllowance { daily_tokens: Some(50_000), monthly_tokens: None };
    /// admin.admin_set_allowance(user, own).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`] 403, 404, 422.
    pub async fn admin_set_allowance(
        &self,
        user: UserId,
        own: OwnAllowance,
    ) -> Result<Allowance, Error> {
        let body = serde_json::to_value(own).map_err(|e| Error::Protocol(e.to_string()))?;
        let url = self.url(&format!("api/v1/admin/users/{user}/allowance"))?;
        json(
            self.authorized(&Call::new(Method::PUT, url).json(body))
                .await?,
        )
        .await
    }
}

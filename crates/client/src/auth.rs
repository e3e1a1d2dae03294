//! Accounts and sessions: register, log in, refresh, log out, who am I.

use reqwest::Method;
use serde_json::json;

use crate::types::Tokens;
use crate::{Call, Client, Credential, Error, User, json};

impl Client {
    /// Creates an account (role `user`). It does not sign in: call
    /// [`Client::login`] next.
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
    /// let user = client.register("alice", "alice@example.com", "correct horse battery staple").await?;
    /// client.login("alice", "correct horse battery staple").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`]: 409 `CONFLICT` naming the taken `field` (`username`
    /// or `email`), 422 `VALIDATION_ERROR` naming the field that breaks a
    /// rule, 429 with `retry_after`.
    pub async fn register(
        &self,
        username: &str,
        email: &str,
        password: &str,
    ) -> Result<User, Error> {
        let call = Call::new(Method::POST, self.url("api/v1/auth/register")?).json(json!({
            "username": username, "email": email, "password": password,
        }));
        json(self.anonymous(&call).await?).await
    }

    /// Signs in with a username (or, when it contains `@`, an e-mail
    /// address) and password. The client keeps the access and refresh
    /// tokens in memory, uses the access token from now on and refreshes it
    /// when it expires.
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
    /// client.login("alice", "correct horse battery staple").await?;
    /// assert!(client.is_signed_in());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`]: 401 `INVALID_CREDENTIALS`, 429 with `retry_after`.
    pub async fn login(&self, username_or_email: &str, password: &str) -> Result<(), Error> {
        let name = if username_or_email.contains('@') {
            "email"
        } else {
            "username"
        };
        let call = Call::new(Method::POST, self.url("api/v1/auth/login")?)
            .json(json!({ name: username_or_email, "password": password }));
        let tokens: Tokens = json(self.anonymous(&call).await?).await?;
        self.set_credential(Credential::Session {
            access: tokens.access_token,
            refresh: tokens.refresh_token,
        });
        Ok(())
    }

    /// Trades the refresh token for a new pair now (the client also does
    /// this by itself when a call finds its access token expired).
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
    /// client.refresh().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotSignedIn`] without a session; [`Error::Api`] 401 when the
    /// refresh token is refused (the session ended): the client then holds
    /// no credentials.
    pub async fn refresh(&self) -> Result<(), Error> {
        let Credential::Session { access, .. } = self.credential() else {
            return Err(Error::NotSignedIn);
        };
        self.refresh_replacing(&access).await.map(|_| ())
    }

    /// Refreshes the session whose access token is `stale`, unless another
    /// call has already replaced it; returns the access token to use.
    ///
    /// The refresh runs in a task of its own, which stores the new pair
    /// whether or not its caller still waits: the server redeems a refresh
    /// token once, so a refresh whose response were dropped with a
    /// cancelled caller would leave a used token behind, and the next
    /// refresh would be a reuse (the session revoked).
    pub(crate) async fn refresh_replacing(&self, stale: &str) -> Result<String, Error> {
        let client = self.clone();
        let stale = stale.to_owned();
        let task = tokio::spawn(async move { client.refresh_now(&stale).await });
        match task.await {
            Ok(result) => result,
            Err(e) => Err(Error::Connection(format!(
                "the refresh did not finish: {e}"
            ))),
        }
    }

    /// The refresh itself (see [`Client::refresh_replacing`]), one at a
    /// time.
    async fn refresh_now(&self, stale: &str) -> Result<String, Error> {
        let _one_at_a_time = self.inner.refreshing.lock().await;
        let Credential::Session { access, refresh } = self.credential() else {
            return Err(Error::NotSignedIn);
        };
        if access != stale {
            return Ok(access);
        }
        let call = Call::new(Method::POST, self.url("api/v1/auth/refresh")?)
            .json(json!({ "refresh_token": refresh }));
        let tokens: Tokens = match self.anonymous(&call).await {
            Ok(response) => json(response).await?,
            Err(e) => {
                if e.api().is_some_and(|api| api.status == 401) {
                    self.set_credential(Credential::None);
                }
                return Err(e);
            }
        };
        self.set_credential(Credential::Session {
            access: tokens.access_token.clone(),
            refresh: tokens.refresh_token,
        });
        Ok(tokens.access_token)
    }

    /// Ends the session on the server and forgets its tokens.
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
    /// client.logout().await?;
    /// assert!(!client.is_signed_in());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotSignedIn`] without a session; [`Error::Api`] when the
    /// server refuses (the tokens are forgotten all the same).
    pub async fn logout(&self) -> Result<(), Error> {
        if !matches!(self.credential(), Credential::Session { .. }) {
            return Err(Error::NotSignedIn);
        }
        let call = Call::new(Method::POST, self.url("api/v1/auth/logout")?);
        let result = self.authorized(&call).await.map(|_| ());
        self.set_credential(Credential::None);
        result
    }

    /// The signed-in account.
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
    /// println!("{}", client.me().await?.username);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotSignedIn`], or [`Error::Api`] 401 when the session ended.
    pub async fn me(&self) -> Result<User, Error> {
        let call = Call::new(Method::GET, self.url("api/v1/users/me")?);
        json(self.authorized(&call).await?).await
    }

    /// Creates an API key of the signed-in user (the password is asked
    /// again, as for a login) and returns its text (`cfk_…`), shown this
    /// once: give it to [`Client::with_api_key`].
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
    /// let key = client
    ///     .create_api_key("ci-bot", &["conversations:read", "conversations:write"], "correct horse battery staple")
    ///     .await?;
    /// let bot = confab_client::Client::with_api_key(client.base_url(), &key)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`]: 401 `INVALID_CREDENTIALS` for a wrong password, 403
    /// when called with an API key, 409 for a taken name, 422.
    pub async fn create_api_key(
        &self,
        name: &str,
        scopes: &[&str],
        password: &str,
    ) -> Result<String, Error> {
        #[derive(serde::Deserialize)]
        struct Created {
            key: String,
        }
        let call = Call::new(Method::POST, self.url("api/v1/users/me/api-keys")?)
            .json(json!({ "name": name, "scopes": scopes, "password": password }));
        let created: Created = json(self.authorized(&call).await?).await?;
        Ok(created.key)
    }
}

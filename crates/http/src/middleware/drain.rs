//! While the instance shuts down (its readiness is draining), every
//! response closes its connection: a client or balancer holding a
//! keep-alive connection to this instance opens its next one elsewhere,
//! instead of sending it here just as the connection is closed.

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;

use crate::State;

/// Marks every response `Connection: close` once draining has begun.
pub(crate) async fn close_while_draining(
    state: State,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, Error> {
    let mut res = next.call(req).await?;
    if state.readiness.draining() {
        res.response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    Ok(res)
}

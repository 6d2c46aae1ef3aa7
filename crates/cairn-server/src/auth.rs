//! etcd's `Auth` service, and how every other service learns who calls.
//!
//! Changes (enable/disable, users, roles, permissions) go through
//! [`Node::auth_change`](cairn_store::Node::auth_change): admin-checked,
//! committed in the meta region and fenced before the answer (see
//! `cairn-store`'s `auth`). Reads (get/list/status) are answered from this
//! member's auth replica once it has caught up with the meta region, so
//! they see every change acknowledged before them. Passwords are hashed
//! here, on the serving member, before they enter the log.
//!
//! As in etcd: a user may get itself and a role it holds without being
//! admin; `RoleGet root` shows the permissions granted to it (none,
//! unless some were: etcd 3.4's answer); lists are sorted.

use std::sync::Arc;

use cairn_api::authpb::{permission, Permission};
use cairn_api::etcdserverpb::auth_server::Auth;
use cairn_api::etcdserverpb::*;
use cairn_auth::{AuthCmd, AuthError, Needs, Perm, PermKind};
use cairn_store::{Access, Credentials};
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::Context;

/// A connection's TLS details, as a request carries them.
pub(crate) type TlsInfo =
    tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>;

/// The caller's credentials: the `token` metadata (the gateway's
/// `authorization` header arrives as `authorization`), and the common name
/// of its verified TLS client certificate.
pub fn credentials<T>(req: &Request<T>) -> Credentials {
    let md = req.metadata();
    let token = md
        .get("token")
        .or_else(|| md.get("authorization"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let common_name = req
        .extensions()
        .get::<TlsInfo>()
        .and_then(|info| info.peer_certs())
        .and_then(|certs| certs.first().and_then(|c| cairn_tls::common_name(c)));
    Credentials { token, common_name }
}

/// The access of a request needing `needs`.
pub fn access<T>(req: &Request<T>, needs: Needs) -> Access {
    Access::client(&credentials(req), needs)
}

/// The Auth service of one node.
pub struct AuthService {
    ctx: Arc<Context>,
}

impl AuthService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(self.ctx.header(self.ctx.node.revision()))
    }

    async fn change(&self, creds: &Credentials, cmd: AuthCmd) -> Result<(), Status> {
        // Fenced in every region: it runs to its end even if the client
        // goes away, or a region would go unfenced until its leader
        // mends it.
        let creds = creds.clone();
        self.ctx
            .to_the_end(|node| async move { node.auth_change(&creds, cmd).await })
            .await?;
        Ok(())
    }

    /// The auth store as of now (caught up with the meta region), after
    /// checking the caller is admin — or, with `own`, is asking about
    /// itself (`Some(user)`) or a role it holds (`Some(role)` in `roles`).
    async fn read(
        &self,
        creds: &Credentials,
        own: impl Fn(&cairn_auth::AuthState, &str) -> bool,
    ) -> Result<cairn_auth::AuthState, Status> {
        let node = &self.ctx.node;
        node.catch_up_auth().await.map_err(Error::from)?;
        let admin = Access::client(creds, Needs::Admin { maintenance: false });
        if let Err(e) = node.authorize(&admin).await {
            // Not admin: still fine for what is the caller's own.
            let user = node
                .authorize(&Access::client(creds, Needs::User))
                .await
                .ok()
                .and_then(|_| caller_name(node, creds));
            let state = node.auth_state();
            if user.is_some_and(|u| own(&state, &u)) {
                return Ok(state);
            }
            return Err(Error::from(e).into());
        }
        Ok(node.auth_state())
    }
}

/// The user `creds` name, if any (after a successful check).
fn caller_name(node: &cairn_store::Node, creds: &Credentials) -> Option<String> {
    match &creds.token {
        Some(t) => node.token_user(t),
        None => creds.common_name.clone(),
    }
}

fn perm_of(p: &Permission) -> Result<Perm, Status> {
    let kind = PermKind::from_i32(p.perm_type)
        .ok_or_else(|| Status::invalid_argument("etcdserver: invalid permission type"))?;
    Ok(Perm {
        kind,
        key: p.key.clone(),
        range_end: p.range_end.clone(),
    })
}

fn permission_of(p: &Perm) -> Permission {
    Permission {
        perm_type: match p.kind {
            PermKind::Read => permission::Type::Read,
            PermKind::Write => permission::Type::Write,
            PermKind::ReadWrite => permission::Type::Readwrite,
        } as i32,
        key: p.key.clone(),
        range_end: p.range_end.clone(),
    }
}

fn auth_err(e: AuthError) -> Status {
    Error::from(cairn_store::Error::Auth(e)).into()
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        self.change(&credentials(&req), AuthCmd::Enable).await?;
        Ok(Response::new(AuthEnableResponse {
            header: self.header(),
        }))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.change(&credentials(&req), AuthCmd::Disable).await?;
        Ok(Response::new(AuthDisableResponse {
            header: self.header(),
        }))
    }

    async fn auth_status(
        &self,
        req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let state = self.read(&credentials(&req), |_, _| true).await?;
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled: state.enabled,
            auth_revision: state.revision,
        }))
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = req.into_inner();
        let token = self
            .ctx
            .node
            .authenticate(&req.name, &req.password)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(AuthenticateResponse {
            header: self.header(),
            token,
        }))
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let creds = credentials(&req);
        let req = req.into_inner();
        if req.name.is_empty() {
            // The admin check first, as etcd's applier runs it before its
            // store looks at the name.
            let admin = Access::client(&creds, Needs::Admin { maintenance: false });
            self.ctx.node.authorize(&admin).await.map_err(Error::from)?;
            return Err(auth_err(AuthError::UserEmpty));
        }
        let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
        let password = if no_password {
            None
        } else if !req.hashed_password.is_empty() {
            Some(req.hashed_password)
        } else {
            Some(
                self.ctx
                    .node
                    .hash_password(&req.password)
                    .await
                    .map_err(Error::from)?,
            )
        };
        self.change(
            &creds,
            AuthCmd::UserAdd {
                name: req.name,
                password,
            },
        )
        .await?;
        Ok(Response::new(AuthUserAddResponse {
            header: self.header(),
        }))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let creds = credentials(&req);
        let name = req.into_inner().name;
        let state = self.read(&creds, |_, me| me == name).await?;
        let user = state
            .users
            .get(&name)
            .ok_or_else(|| auth_err(AuthError::UserNotFound))?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header(),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let state = self.read(&credentials(&req), |_, _| false).await?;
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users: state.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let creds = credentials(&req);
        let name = req.into_inner().name;
        self.change(&creds, AuthCmd::UserDelete { name }).await?;
        Ok(Response::new(AuthUserDeleteResponse {
            header: self.header(),
        }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let creds = credentials(&req);
        let req = req.into_inner();
        let password = if req.hashed_password.is_empty() {
            self.ctx
                .node
                .hash_password(&req.password)
                .await
                .map_err(Error::from)?
        } else {
            req.hashed_password
        };
        self.change(
            &creds,
            AuthCmd::UserChangePassword {
                name: req.name,
                password,
            },
        )
        .await?;
        Ok(Response::new(AuthUserChangePasswordResponse {
            header: self.header(),
        }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let creds = credentials(&req);
        let req = req.into_inner();
        self.change(
            &creds,
            AuthCmd::UserGrantRole {
                user: req.user,
                role: req.role,
            },
        )
        .await?;
        Ok(Response::new(AuthUserGrantRoleResponse {
            header: self.header(),
        }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let creds = credentials(&req);
        let req = req.into_inner();
        self.change(
            &creds,
            AuthCmd::UserRevokeRole {
                user: req.name,
                role: req.role,
            },
        )
        .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse {
            header: self.header(),
        }))
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let creds = credentials(&req);
        let name = req.into_inner().name;
        self.change(&creds, AuthCmd::RoleAdd { name }).await?;
        Ok(Response::new(AuthRoleAddResponse {
            header: self.header(),
        }))
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let creds = credentials(&req);
        let role = req.into_inner().role;
        let state = self
            .read(&creds, |s, me| {
                s.users.get(me).is_some_and(|u| u.roles.contains(&role))
            })
            .await?;
        let perms = state
            .role_perms(&role)
            .ok_or_else(|| auth_err(AuthError::RoleNotFound))?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm: perms.iter().map(permission_of).collect(),
        }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let state = self.read(&credentials(&req), |_, _| false).await?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles: state.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let creds = credentials(&req);
        let name = req.into_inner().role;
        self.change(&creds, AuthCmd::RoleDelete { name }).await?;
        Ok(Response::new(AuthRoleDeleteResponse {
            header: self.header(),
        }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let creds = credentials(&req);
        let req = req.into_inner();
        let perm = req
            .perm
            .as_ref()
            .ok_or_else(|| auth_err(AuthError::PermissionNotGiven))
            .and_then(perm_of)?;
        self.change(
            &creds,
            AuthCmd::RoleGrantPermission {
                role: req.name,
                perm,
            },
        )
        .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse {
            header: self.header(),
        }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let creds = credentials(&req);
        let req = req.into_inner();
        self.change(
            &creds,
            AuthCmd::RoleRevokePermission {
                role: req.role,
                key: req.key,
                range_end: req.range_end,
            },
        )
        .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse {
            header: self.header(),
        }))
    }
}

//! The `http-api` provider: any HTTP/REST API as a resource, its endpoints, auth, state mapping and commands declared in config.

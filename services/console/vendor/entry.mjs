// The public API of @nats-io/nats-core (its lib/mod.d.ts), re-exported by name: the package is
// CommonJS, so `export *` would give esbuild nothing to export from the ES module it writes.
export {
  AuthorizationError, backoff, Bench, buildAuthenticator, canonicalMIMEHeaderKey, ClosedConnectionError,
  ConnectionError, createInbox, credsAuthenticator, deadline, deferred, delay, DrainingConnectionError, Empty,
  errors, hasWsProtocol, headers, InvalidArgumentError, InvalidOperationError, InvalidSubjectError,
  jwtAuthenticator, Match, Metric, millis, MsgHdrsImpl, nanos, nkeyAuthenticator, nkeys, NoRespondersError,
  Nuid, nuid, PermissionViolationError, ProtocolError, RequestError, syncIterator, TimeoutError,
  tokenAuthenticator, UserAuthenticationExpiredError, usernamePasswordAuthenticator, wsconnect,
} from "@nats-io/nats-core";

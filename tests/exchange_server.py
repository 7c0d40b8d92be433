"""A local HTTPS server that plays GitHub's REST API and OAuth token endpoints, for the
exchange tests (`jwt-agent token`, `exec --exchange`). The real services cannot be reached from
the test machines, so this one answers as they document, and checks every assertion it receives
with PyJWT, an implementation independent of jwt-agent, against the public keys the test put in
DIR/keys/*.pem.

    python3 exchange_server.py DIR

Writes DIR/ca.pem (the CA of its certificate, for --ca-file), then DIR/port once it listens,
and one JSON line per request to DIR/requests.jsonl: what came, and what PyJWT made of it.
"""

import datetime
import glob
import http.server
import json
import os
import secrets
import ssl
import sys
import threading
import time
import urllib.parse

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DIR = sys.argv[1]
LOCK = threading.Lock()
ISSUED = {}  # GitHub installation tokens: token -> revoked?
JTIS = set()

GITHUB_REPOS = {"octo-org/app": 4242, "octo-org/docs": 4242, "octo-org/limited": None}
INSTALLATION_REPOS = {"app", "docs"}
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def make_certificate():
    """A CA and a certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "exchange test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)
    with open(os.path.join(DIR, "ca.pem"), "wb") as f:
        f.write(pem(ca))
    with open(os.path.join(DIR, "server.pem"), "wb") as f:
        f.write(pem(leaf))
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def verify(token, algorithms, **checks):
    """The assertion's (header, claims) as PyJWT verifies them with one of the test's keys,
    or raises with PyJWT's reason."""
    last = None
    for path in sorted(glob.glob(os.path.join(DIR, "keys", "*.pem"))):
        with open(path) as f:
            key = f.read()
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                options={"require": ["iat", "exp"] if checks.pop("require_iat", True) else ["exp"]},
                **checks,
            )
            return jwt.get_unverified_header(token), claims
        except (jwt.InvalidSignatureError, jwt.InvalidKeyError) as e:
            last = e
            continue
    raise last or jwt.InvalidSignatureError("no key")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self, **entry):
        entry.update(method=self.command, path=self.path)
        with LOCK, open(os.path.join(DIR, "requests.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")

    def reply(self, status, body=None, headers=()):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def bearer(self):
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def body(self):
        return self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()

    def do_GET(self):
        self.github()

    def do_DELETE(self):
        self.github()

    def do_POST(self):
        if self.path.startswith(("/api/v3/", "/app/")):
            return self.github()
        return self.oauth()

    # GitHub's REST API, under /api/v3 as GitHub Enterprise Server has it.
    def github(self):
        path = self.path[len("/api/v3") :] if self.path.startswith("/api/v3/") else self.path
        body = self.body()
        headers = {k: self.headers.get(k) for k in ("Accept", "X-GitHub-Api-Version", "User-Agent")}
        if self.command == "DELETE" and path == "/installation/token":
            token = self.bearer()
            with LOCK:
                known = ISSUED.get(token) is False
                if known:
                    ISSUED[token] = True
            self.record(revoked=token if known else None, headers=headers)
            return self.reply(204) if known else self.reply(401, {"message": "Bad credentials"})
        try:
            header, claims = verify(self.bearer() or "", ["RS256"])
            if claims["exp"] - claims["iat"] > 660:
                raise jwt.InvalidTokenError("exp is more than 10 minutes after iat")
        except Exception as e:
            self.record(verified=False, error=str(e), headers=headers)
            return self.reply(
                401,
                {"message": "A JSON web token could not be decoded", "documentation_url": "https://docs.github.com/rest"},
            )
        entry = dict(verified=True, header=header, claims=claims, headers=headers)
        if self.command == "GET" and path.startswith("/repos/") and path.endswith("/installation"):
            repo = path[len("/repos/") : -len("/installation")]
            self.record(repo=repo, **entry)
            if repo == "octo-org/limited":
                reset = str(int(time.time()) + 900)
                return self.reply(
                    403,
                    {"message": "API rate limit exceeded for app ID 1."},
                    [("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", reset)],
                )
            if GITHUB_REPOS.get(repo):
                return self.reply(200, {"id": GITHUB_REPOS[repo], "app_id": 1, "account": {"login": "octo-org"}})
            return self.reply(404, {"message": "Not Found"})
        if self.command == "POST" and path.startswith("/app/installations/") and path.endswith("/access_tokens"):
            installation = path[len("/app/installations/") : -len("/access_tokens")]
            asked = json.loads(body or "{}")
            self.record(installation=installation, asked=asked, **entry)
            if installation != "4242":
                return self.reply(404, {"message": "Not Found"})
            repos = asked.get("repositories")
            if repos and not set(repos) <= INSTALLATION_REPOS:
                return self.reply(
                    422,
                    {"message": "There is at least one repository that does not exist or is not accessible to the parent installation."},
                )
            token = "ghs_" + secrets.token_urlsafe(27)
            with LOCK:
                ISSUED[token] = False
            expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
            answer = {
                "token": token,
                "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "permissions": asked.get("permissions") or {"contents": "read", "metadata": "read"},
                "repository_selection": "selected" if repos else "all",
            }
            if repos:
                answer["repositories"] = [{"name": r, "full_name": "octo-org/" + r} for r in repos]
            return self.reply(201, answer)
        self.record(**entry)
        return self.reply(404, {"message": "Not Found"})

    # OAuth token endpoints.
    def oauth(self):
        form = dict(urllib.parse.parse_qsl(self.body()))
        assertion = form.pop("client_assertion", None) or form.pop("assertion", None) or ""
        own = "https://127.0.0.1:%d%s" % (self.server.server_port, self.path)
        path = self.path
        expires_in, extra = 3599, {}
        try:
            if path == "/token" or path.endswith("/oauth2/v2.0/token"):
                if form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
                    raise ValueError("unsupported_grant_type")
                entra = path != "/token"
                aud = "https://login.microsoftonline.com%s" % path if entra else own
                header, claims = verify(
                    assertion,
                    ["PS256"] if entra else ["ES256", "RS256", "PS256"],
                    audience=aud,
                    issuer=form.get("client_id"),
                )
                if claims.get("sub") != claims.get("iss") or not claims.get("jti"):
                    raise jwt.InvalidTokenError("sub must be iss, and jti given")
                if entra and "x5t#S256" not in header:
                    raise jwt.InvalidTokenError("AADSTS700027: the assertion has no x5t#S256")
                with LOCK:
                    if claims["jti"] in JTIS:
                        raise jwt.InvalidTokenError("the jti was used before")
                    JTIS.add(claims["jti"])
                if claims["iss"] == "unknown-client":
                    raise LookupError("AADSTS700016: Application with identifier 'unknown-client' was not found")
                if entra:
                    extra = {"ext_expires_in": 3599}
            elif path in ("/google/token", "/services/oauth2/token", "/oauth/token"):
                if form.get("grant_type") != JWT_BEARER:
                    raise ValueError("unsupported_grant_type")
                aud = {
                    "/google/token": "https://oauth2.googleapis.com/token",
                    "/services/oauth2/token": "https://login.salesforce.com",
                    "/oauth/token": "account-d.docusign.com",
                }[path]
                header, claims = verify(assertion, ["RS256"], audience=aud, require_iat=path != "/services/oauth2/token")
                if path == "/google/token" and not claims.get("scope"):
                    raise jwt.InvalidTokenError("Google wants scope")
                if path == "/services/oauth2/token":
                    if claims.get("sub") == "unapproved@example.com":
                        raise PermissionError("user hasn't approved this consumer")
                    expires_in = None
                    extra = {"instance_url": "https://example.my.salesforce.com", "id": "https://login.salesforce.com/id/00D/005", "scope": "api"}
                if path == "/oauth/token":
                    expires_in = 3600
            else:
                self.record(form=form)
                return self.reply(404, {"error": "not_found"})
        except ValueError as e:
            self.record(form=form, verified=False, error=str(e))
            return self.reply(400, {"error": str(e)})
        except PermissionError as e:
            self.record(form=form, verified=True, error=str(e))
            return self.reply(400, {"error": "invalid_grant", "error_description": str(e)})
        except LookupError as e:
            self.record(form=form, verified=True, error=str(e))
            return self.reply(401, {"error": "invalid_client", "error_description": str(e)})
        except Exception as e:
            self.record(form=form, verified=False, error=str(e))
            return self.reply(401, {"error": "invalid_client", "error_description": "assertion: %s" % e})
        token = secrets.token_urlsafe(32)
        answer = {"access_token": token, "token_type": "Bearer", **extra}
        if expires_in is not None:
            answer["expires_in"] = expires_in
        if form.get("scope"):
            answer["scope"] = form["scope"]
        self.record(form=form, verified=True, header=header, claims=claims, issued=token)
        return self.reply(200, answer)


def main():
    make_certificate()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(DIR, "server.pem"))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with open(os.path.join(DIR, "port.tmp"), "w") as f:
        f.write(str(server.server_port))
    os.rename(os.path.join(DIR, "port.tmp"), os.path.join(DIR, "port"))
    server.serve_forever()


main()

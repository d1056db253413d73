#!/usr/bin/env python3
"""Tokens made by an independent JOSE library (joserfc, on pyca/cryptography) for the
AuthTests: one key and one token per algorithm, written to joserfc.json with the public
keys as a JWKS. Run again only to change the fixtures; the output is committed:

    pip install joserfc && python3 make_fixtures.py > joserfc.json
"""
import json

from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

CLAIMS = {"iss": "fixtures", "sub": "alice", "aud": "api", "iat": 1700000000, "nbf": 1700000000, "exp": 1700003600}

keys = {
    "HS256": OctKey.generate_key(256), "HS384": OctKey.generate_key(384), "HS512": OctKey.generate_key(512),
    "RS256": RSAKey.generate_key(2048), "RS384": RSAKey.generate_key(2048), "RS512": RSAKey.generate_key(2048),
    "PS256": RSAKey.generate_key(2048), "PS384": RSAKey.generate_key(2048), "PS512": RSAKey.generate_key(2048),
    "ES256": ECKey.generate_key("P-256"), "ES384": ECKey.generate_key("P-384"), "ES512": ECKey.generate_key("P-521"),
    "EdDSA": OKPKey.generate_key("Ed25519"),
}

out = {"claims": CLAIMS, "tokens": {}, "jwks": {"keys": []}, "private_pem": {}, "public_pem": {}}
for alg, key in keys.items():
    kid = alg.lower()
    out["tokens"][alg] = jwt.encode({"alg": alg, "kid": kid}, CLAIMS, key, algorithms=[alg])
    public = key.as_dict(private=alg.startswith("HS"))
    public["kid"] = kid
    public["use"] = "sig"
    out["jwks"]["keys"].append(public)
    if not alg.startswith("HS"):
        out["private_pem"][alg] = key.as_pem(private=True).decode()
        out["public_pem"][alg] = key.as_pem(private=False).decode()

print(json.dumps(out, indent=1, sort_keys=True))

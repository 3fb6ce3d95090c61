"""Federated fine-tuning on NVFlare: attested parties whose identity and credentials come from
Trustee (identity in initdata, a Trustee-backed CCAuthorizer, identity-bound credentials)."""

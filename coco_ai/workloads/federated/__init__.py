"""The confidential federated fine-tune: one party (aggregator or participant) per TEE."""

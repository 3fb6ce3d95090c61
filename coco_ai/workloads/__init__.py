"""What runs inside the TEE: the confidential fine-tune (``finetune``), its data set tooling
(``dataset``), base models (``models``) and the local stand-in surroundings (``devstack``)."""

# Promotion policy: may this attested, verified checkpoint become a served model?
#
# Evaluated with regopy by coco_ai.promotion after the cryptographic chain has been verified
# (token genuine, claims meeting policy, manifest signed by the attested key, ciphertext digests).
# `input` is the promotion input documented in docs/formats/promotion.md; `data.promotion` holds
# the run's expectations (thresholds and approved digests). The decision is `allow` plus a set of
# `deny` reasons; `allow` holds only when there is no reason to deny.
package coco_ai.promotion

import rego.v1

default allow := false

allow if {
	input.attestation.verified == true
	count(deny) == 0
}

# ---- attestation summary (already enforced by the verification chain; restated here so the
# promotion decision stands on its own when audited) ---------------------------------------------

deny contains "attestation chain was not verified" if not input.attestation.verified == true

deny contains msg if {
	some name, status in input.attestation.submods
	status != "affirming"
	msg := sprintf("attestation submod %s is %s, not affirming", [name, status])
}

deny contains msg if {
	not input.attestation.submods.cpu0
	msg := "attestation has no cpu0 submod"
}

deny contains msg if {
	input.attestation.gpu_count < data.promotion.min_gpus
	msg := sprintf("attestation covers %d GPU(s), at least %d required", [input.attestation.gpu_count, data.promotion.min_gpus])
}

deny contains msg if {
	some name, id in input.attestation.appraisal_policy_ids
	not id in data.promotion.appraisal_policy_ids
	msg := sprintf("attestation submod %s was appraised by policy %v, which the owner policy does not accept", [name, id])
}

deny contains "attestation rests on development (sample/sampledevice) evidence, which the owner policy does not accept" if {
	input.attestation.development_evidence
	not data.promotion.allow_development_evidence == true
}

# ---- code: the TEE ran an approved image ----------------------------------------------------------

deny contains msg if {
	not input.attestation.image_digest in data.promotion.approved_images
	msg := sprintf("image %v is not approved", [object.get(input.attestation, "image_digest", null)])
}

# ---- inputs: the output must come from approved inputs and an approved recipe -----------------
# The manifest names two input digests for every workload kind; `data.promotion.labels` says
# what they are for this run's kind (fine-tune: base model, data set; rag_index: embedder,
# document repository) and what its recipe is called.

default_labels := {
	"base_model_digest": "base model",
	"dataset_digest": "data set",
	"recipe": "training recipe",
}

label(name) := object.get(object.get(data.promotion, "labels", default_labels), name, default_labels[name])

deny contains msg if {
	not input.checkpoint.base_model_digest in data.promotion.approved_base_models
	msg := sprintf("%s %v is not approved", [label("base_model_digest"), object.get(input.checkpoint, "base_model_digest", null)])
}

deny contains msg if {
	not input.checkpoint.dataset_digest in data.promotion.approved_datasets
	msg := sprintf("%s %v is not approved", [label("dataset_digest"), object.get(input.checkpoint, "dataset_digest", null)])
}

deny contains msg if {
	not input.checkpoint.training_recipe_digest in data.promotion.approved_training_recipes
	msg := sprintf("%s %v is not approved", [label("recipe"), object.get(input.checkpoint, "training_recipe_digest", null)])
}

deny contains msg if {
	wanted := data.promotion.checkpoint_key_uri
	input.checkpoint.key_uri != wanted
	msg := sprintf("checkpoint is encrypted under %v, not this run's key %v", [input.checkpoint.key_uri, wanted])
}

# ---- metrics -----------------------------------------------------------------------------------
# `data.promotion.metric_bounds`: [{metric, minimum (true: a floor, false: a ceiling), limit}],
# the thresholds of the run's workload kind (coco_ai.workloads.kinds) the owner policy sets.

deny contains msg if {
	some bound in object.get(data.promotion, "metric_bounds", [])
	not is_number(input.metrics[bound.metric])
	msg := sprintf("metric %s is missing from the manifest", [bound.metric])
}

deny contains msg if {
	some bound in object.get(data.promotion, "metric_bounds", [])
	bound.minimum == false
	input.metrics[bound.metric] > bound.limit
	msg := sprintf("%s %v is above the maximum %v", [bound.metric, input.metrics[bound.metric], bound.limit])
}

deny contains msg if {
	some bound in object.get(data.promotion, "metric_bounds", [])
	bound.minimum == true
	input.metrics[bound.metric] < bound.limit
	msg := sprintf("%s %v is below the minimum %v", [bound.metric, input.metrics[bound.metric], bound.limit])
}

deny contains msg if {
	"min_relative_improvement" in object.keys(data.promotion)
	not valid_baseline
	msg := "metrics eval_loss and eval_loss_before (> 0) are needed to measure improvement"
}

deny contains msg if {
	valid_baseline
	wanted := data.promotion.min_relative_improvement
	gained := relative_improvement
	gained < wanted
	msg := sprintf("eval_loss improved by %v (relative), at least %v required", [gained, wanted])
}

valid_baseline if {
	is_number(input.metrics.eval_loss)
	is_number(input.metrics.eval_loss_before)
	input.metrics.eval_loss_before > 0
}

relative_improvement := (input.metrics.eval_loss_before - input.metrics.eval_loss) / input.metrics.eval_loss_before

"""The operator's custom-resource API, one subpackage per version."""

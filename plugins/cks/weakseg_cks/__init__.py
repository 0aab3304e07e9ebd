"""weakseg_cks: Collaborative Knowledge Sharing (CKS) as a weakseg plugin."""

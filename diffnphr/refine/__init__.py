"""Test-time refinement: fit ICT-FaceKit's linear model to the photo's Face Mesh landmarks, starting from the
sampled head, and carry the fitted expression into its latent through the factor map (issue 28)."""

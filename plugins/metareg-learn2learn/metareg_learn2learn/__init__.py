"""learn2learn's datasets, models and gradient-based meta-learners as metareg components."""

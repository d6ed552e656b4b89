"""Templates of the CALF recipes: real modules (importable and tested here), copied into ``models/`` of a CALF
clone. They need only what CALF requires (torch, transformers) besides the generic templates they import."""

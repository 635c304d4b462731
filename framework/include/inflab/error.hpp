// Errors a user can act on: every message says where, what was expected and what was found.
#pragma once
#include <stdexcept>
#include <string>
#include <vector>

namespace inflab {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The closest candidate by edit distance, or "" when nothing is reasonably close.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace inflab

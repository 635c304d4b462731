# inflab_add_plugin(<name> <sources...>): a plugin shared library that the inflab registry loads.
#  - links inflab::core (headers, LibTorch, Boost.DLL);
#  - no "lib" prefix, placed in INFLAB_PLUGIN_OUTPUT_DIRECTORY (default: <build>/plugins);
#  - linked with -z nodelete: a plugin unloaded at exit while the registry still holds a function
#    from it would otherwise crash (seen with clang).
function(inflab_add_plugin name)
  add_library(${name} MODULE ${ARGN})
  if(TARGET inflab_core)
    target_link_libraries(${name} PRIVATE inflab_core)
  else()
    target_link_libraries(${name} PRIVATE inflab::core)
  endif()
  if(NOT INFLAB_PLUGIN_OUTPUT_DIRECTORY)
    set(INFLAB_PLUGIN_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/plugins)
  endif()
  set_target_properties(${name} PROPERTIES
    PREFIX ""
    LIBRARY_OUTPUT_DIRECTORY ${INFLAB_PLUGIN_OUTPUT_DIRECTORY}
    CXX_VISIBILITY_PRESET hidden)
  target_link_options(${name} PRIVATE -Wl,-z,nodelete)
endfunction()

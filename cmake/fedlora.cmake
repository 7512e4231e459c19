# Helpers shared by the component CMakeLists.

# fedlora_use_torch(target): links LibTorch PRIVATELY (no include paths, definitions or ABI flags
# leak to dependents) and unity-builds the target, which cut LibTorch-heavy builds by ~3x here.
function(fedlora_use_torch target)
  # libstdc++ ahead of LibTorch among the libraries a binary needs: the LibTorch inside PyTorch's
  # PyPI wheels (2.11 seen) exports its own, older copy of std::filesystem (64 functions, without
  # symbol versions). Needed after it, our references bind to that copy, and remove_all crashed
  # through a null pointer on the first GPU run. Debian's LibTorch exports none; no harm there.
  target_link_libraries(${target} PRIVATE "-Wl,--push-state,--no-as-needed" stdc++
                        "-Wl,--pop-state" torch)
  if(FEDLORA_UNITY_ML)
    set_target_properties(${target} PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE 8)
  endif()
endfunction()

# fedlora_add_test(NAME name SOURCES ... LIBS ... LABELS ... [TORCH])
# One GoogleTest binary per component; every TEST is registered with ctest by discovery at test
# time (PRE_TEST), so a LibTorch binary is not run on every link.
function(fedlora_add_test)
  cmake_parse_arguments(T "TORCH" "NAME;TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gmock GTest::gtest_main fedlora_warnings)
  target_compile_definitions(${T_NAME} PRIVATE
    FEDLORA_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    FEDLORA_BINARY_DIR="${PROJECT_BINARY_DIR}")
  if(T_TORCH)
    fedlora_use_torch(${T_NAME})
  endif()
  gtest_discover_tests(${T_NAME}
    DISCOVERY_MODE PRE_TEST
    DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT})
endfunction()

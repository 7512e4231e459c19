# Installation: `cmake --install build [--prefix P]` and the .deb (`cpack --config
# build/CPackConfig.cmake`).
#   bin/                       fedlora-coordinator, fedlora-client, fedlora-sim, fedlora-agg,
#                              fedlora-report and
#                              the SentencePiece shim they look for next to themselves
#   lib/systemd/system/        fedlora-coordinator.service, fedlora-client.service
#   <sysconfdir>/fedlora/      coordinator.yaml, client.yaml (the services' configurations)
#   share/fedlora/             configs/ (every example), assets/ (stories260K, tok512,
#                              tinyshakespeare, with their licences), grafana/, docs
#   include/fedlora/, lib/     the torch-free libraries for C++ users, with a CMake package:
#                              find_package(fedlora) -> fedlora::common (tensors, safetensors, PEFT,
#                              wire messages and codec, config, CURVE keys, transport),
#                              fedlora::server (the coordinator), fedlora::ops (metrics, endpoint)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS fedlora-coordinator fedlora-client fedlora-sim fedlora-agg fedlora-report
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT runtime)
install(TARGETS fedlora_spm_shim LIBRARY DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT runtime)

# The services and their configurations, configured at install time for the prefix installed
# to (`--prefix`, or CPack's /usr): a /usr install keeps its configuration in /etc, as Debian does.
install(CODE "
  set(prefix \"\${CMAKE_INSTALL_PREFIX}\")
  if(prefix STREQUAL \"/usr\")
    set(etc /etc)
  else()
    set(etc \"\${prefix}/${CMAKE_INSTALL_SYSCONFDIR}\")
  endif()
  set(FEDLORA_BIN_DIR \"\${prefix}/${CMAKE_INSTALL_BINDIR}\")
  set(FEDLORA_CONF_DIR \"\${etc}/fedlora\")
  set(FEDLORA_DATA_DIR \"\${prefix}/${CMAKE_INSTALL_DATADIR}/fedlora\")
  set(FEDLORA_UNIT_DIR \"\${prefix}/lib/systemd/system\")
  foreach(unit fedlora-coordinator.service fedlora-client.service)
    configure_file(\"${PROJECT_SOURCE_DIR}/deploy/systemd/\${unit}.in\"
                   \"\$ENV{DESTDIR}\${FEDLORA_UNIT_DIR}/\${unit}\" @ONLY)
    message(STATUS \"Installing: \$ENV{DESTDIR}\${FEDLORA_UNIT_DIR}/\${unit}\")
  endforeach()
  foreach(conf coordinator.yaml client.yaml)
    configure_file(\"${PROJECT_SOURCE_DIR}/deploy/systemd/\${conf}.in\"
                   \"\$ENV{DESTDIR}\${FEDLORA_CONF_DIR}/\${conf}\" @ONLY)
    message(STATUS \"Installing: \$ENV{DESTDIR}\${FEDLORA_CONF_DIR}/\${conf}\")
  endforeach()
" COMPONENT runtime)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/configs/ DESTINATION ${CMAKE_INSTALL_DATADIR}/fedlora/configs
        COMPONENT runtime)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/assets/ DESTINATION ${CMAKE_INSTALL_DATADIR}/fedlora/assets
        COMPONENT runtime)
install(FILES ${PROJECT_SOURCE_DIR}/deploy/grafana/fedlora.json
        DESTINATION ${CMAKE_INSTALL_DATADIR}/fedlora/grafana COMPONENT runtime)
install(FILES ${PROJECT_SOURCE_DIR}/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT runtime)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT runtime)

# The libraries and their headers (the sources include each other from the repository root:
# "common/status.h", so the headers go under include/fedlora/ with the same layout).
set(FEDLORA_EXPORTED fedlora_common fedlora_proto fedlora_ops fedlora_server fedlora_warnings)
foreach(lib fedlora_common fedlora_ops fedlora_server)
  target_include_directories(${lib} INTERFACE $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}/fedlora>)
endforeach()
set_target_properties(fedlora_common PROPERTIES EXPORT_NAME common)
set_target_properties(fedlora_proto PROPERTIES EXPORT_NAME proto)
set_target_properties(fedlora_ops PROPERTIES EXPORT_NAME ops)
set_target_properties(fedlora_server PROPERTIES EXPORT_NAME server)
set_target_properties(fedlora_warnings PROPERTIES EXPORT_NAME warnings)
install(TARGETS ${FEDLORA_EXPORTED} EXPORT fedlora-targets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
foreach(dir common server)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/${dir}/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/fedlora/${dir}
          COMPONENT dev FILES_MATCHING PATTERN "*.h")
endforeach()
install(EXPORT fedlora-targets NAMESPACE fedlora:: FILE fedlora-targets.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/fedlora COMPONENT dev)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/fedlora-config.cmake.in
                              ${PROJECT_BINARY_DIR}/fedlora-config.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/fedlora)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/fedlora-config-version.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/fedlora-config.cmake
              ${PROJECT_BINARY_DIR}/fedlora-config-version.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/fedlora COMPONENT dev)

# The .deb: one package, the Debian 12 runtime libraries as dependencies (as deploy/Dockerfile
# installs them).
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME fedlora)
set(CPACK_PACKAGE_VENDOR "fedlora")
set(CPACK_PACKAGE_CONTACT "fedlora maintainers <fedlora@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Federated LoRA fine-tuning: coordinator, client and simulator")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_DEPENDS
    "libtorch1.13, libopenblas0-openmp, libcapnp-0.9.2, libzmq5, libsodium23, libssl3, libyaml-cpp0.7, libspdlog1.10, libfmt9, libpcre2-8-0, libutf8proc2, libsentencepiece0, zlib1g, libcpp-httplib0.11")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${PROJECT_SOURCE_DIR}/deploy/debian/conffiles)
include(CPack)
